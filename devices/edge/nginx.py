"""The nginx server block that puts nginx in front of the app and lets it send the artifact bytes
(OTA_ARTIFACT_ACCEL_REDIRECT): the README's production snippet, the benchmark and the tests all render this one.

The app authorises every request and decides its answer (token, rules, 416, If-Range); it then names one of two
internal locations, which no client can reach directly:
- `whole/`: the whole image; `max_ranges 0` so nginx ignores a Range the app chose to ignore.
- `range/`: the one satisfiable range the request names; nginx applies it (one range at most) and compares If-Range
  with the same ETag the app uses, the quoted sha256 taken from the path (`etag off`: not nginx's mtime-size tag).
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_ACCEL_PREFIX = "/_ota_artifacts/"


def nginx_artifact_locations(*, artifact_root: Path, prefix: str = DEFAULT_ACCEL_PREFIX) -> str:
    """The two internal locations that serve authorised artifact bytes from the store."""
    base = prefix.rstrip("/")
    blocks = []
    for kind, ranges in (("whole", 0), ("range", 1)):
        blocks.append(
            f'location ~ "^{base}/{kind}/(?<ota_shard>[0-9a-f]{{2}})/(?<ota_sha256>[0-9a-f]{{64}})$" {{\n'
            "    internal;\n"
            f"    alias {artifact_root}/$ota_shard/$ota_sha256;\n"
            f"    max_ranges {ranges};\n"
            "    etag off;\n"
            "    if_modified_since off;\n"
            '    add_header ETag "\\"$ota_sha256\\"" always;\n'
            "}\n"
        )
    return "".join(blocks)


def nginx_device_site(*, listen: str, upstream: str, artifact_root: Path, prefix: str = DEFAULT_ACCEL_PREFIX) -> str:
    """A server block: everything proxied to the app (`upstream`, host:port), artifact bytes sent by nginx."""
    locations = nginx_artifact_locations(artifact_root=artifact_root, prefix=prefix)
    indented = "".join(f"    {line}\n" if line else "\n" for line in locations.splitlines())
    return (
        "server {\n"
        f"    listen {listen};\n"
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    location / {\n"
        f"        proxy_pass http://{upstream};\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        proxy_set_header X-Forwarded-For $remote_addr;\n"
        "        proxy_buffering on;\n"
        "    }\n"
        f"{indented}"
        "}\n"
    )


def nginx_main_conf(*, workdir: Path, servers: list[str], workers: int = 1, user: str = "") -> str:
    """A whole nginx.conf for a private nginx in `workdir` (pid, logs and temp files there; foreground).

    `user`: whom the workers run as when nginx starts as root (they must be able to read the artifact store)."""
    temp = "".join(
        f"    {name}_temp_path {workdir}/{name}_temp;\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body = "".join("".join(f"    {line}\n" for line in server.splitlines()) for server in servers)
    run_as = f"user {user};\n" if user else ""
    return (
        "daemon off;\n"
        f"{run_as}"
        f"worker_processes {workers};\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    default_type application/octet-stream;\n"
        "    keepalive_requests 100000;\n"
        f"{temp}"
        f"{body}"
        "}\n"
    )


def nginx_device_tls_site(
    *,
    listen: str,
    upstream: str,
    artifact_root: Path,
    server_certificate: Path,
    server_key: Path,
    client_ca_bundle: Path,
    proxy_secret: str,
    prefix: str = DEFAULT_ACCEL_PREFIX,
    proxied: tuple[str, ...] = ("/device/", "/repository/"),
) -> str:
    """The device port: TLS with client certificates verified against the device CA, the device API proxied to the
    app (`upstream`, host:port, over loopback) and artifact bytes sent by nginx.

    nginx sets `X-OTA-Client-Cert` (the verified certificate) and `X-OTA-Proxy-Auth` (the secret the app trusts that
    header with) itself: proxy_set_header replaces a client's header of the same name, and headers with underscores
    are dropped (nginx's default), so no spelling of them gets through from a client. Only /device/ (the device API)
    and /repository/ (the image repository's static TUF tree, which the agents verify) are served.
    A refused client certificate (unknown CA, expired, none: 495/496) is handed to the app's `tls-refused`
    endpoint with nginx's verification result, which records it as a security event and answers 400."""
    if any(char in proxy_secret for char in "\"'\\;{} \n\r\t$"):
        raise ValueError("the proxy secret must be URL-safe text")
    locations = nginx_artifact_locations(artifact_root=artifact_root, prefix=prefix)
    indented = "".join(f"    {line}\n" if line else "\n" for line in locations.splitlines())
    pattern = "|".join(re.escape(path.strip("/")) for path in proxied)
    return (
        "upstream ota_device_app {\n"
        f"    server {upstream};\n"
        "    keepalive 64;\n"
        "}\n"
        "server {\n"
        f"    listen {listen} ssl;\n"
        f"    ssl_certificate {server_certificate};\n"
        f"    ssl_certificate_key {server_key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_prefer_server_ciphers on;\n"
        "    ssl_session_cache shared:ota_device_tls:20m;\n"
        "    ssl_session_timeout 1h;\n"
        f"    ssl_client_certificate {client_ca_bundle};\n"
        "    ssl_verify_client on;\n"
        "    ssl_verify_depth 2;\n"
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    keepalive_timeout 75s;\n"
        "    client_max_body_size 1m;\n"
        f'    location ~ "^/({pattern})/" {{\n'
        "        proxy_pass http://ota_device_app;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        proxy_set_header X-Forwarded-For $remote_addr;\n"
        "        proxy_set_header X-Forwarded-Proto https;\n"
        "        proxy_set_header X-OTA-Client-Cert $ssl_client_escaped_cert;\n"
        f'        proxy_set_header X-OTA-Proxy-Auth "{proxy_secret}";\n'
        '        proxy_set_header X-OTA-TLS-Refused "";\n'
        "        proxy_buffering on;\n"
        "    }\n"
        "    location / {\n"
        "        return 404;\n"
        "    }\n"
        "    location = /device/v1/tls-refused/ {\n"  # only nginx's own hand-off below reaches it
        "        return 404;\n"
        "    }\n"
        "    error_page 495 496 = @ota_tls_refused;\n"
        "    location @ota_tls_refused {\n"
        "        rewrite ^ /device/v1/tls-refused/ break;\n"
        "        proxy_pass http://ota_device_app;\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_method POST;\n"
        "        proxy_pass_request_body off;\n"
        "        proxy_pass_request_headers off;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        '        proxy_set_header Content-Length "0";\n'
        "        proxy_set_header X-Forwarded-For $remote_addr;\n"
        "        proxy_set_header X-OTA-TLS-Refused $ssl_client_verify;\n"
        f'        proxy_set_header X-OTA-Proxy-Auth "{proxy_secret}";\n'
        "    }\n"
        f"{indented}"
        "}\n"
    )
