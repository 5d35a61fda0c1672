"""The nginx configuration of the device port: the README's production snippet, `devices nginx-config` (make run,
the drills), the benchmark and the tests all render it here.

Artifact ranges are served by nginx itself (sendfile, ranges, If-Range against the sha256 ETag) once the app has
vouched for them, and the vouch is cached by nginx for a bounded time:
- the public artifact URL is rewritten to the internal `vouched/` location, which asks the app first
  (`auth_request` to `artifacts/<sha256>/vouch/?token=...`, `devices.edge.vouch`). The app answers 200 with
  `X-Accel-Expires` (the seconds nginx may reuse it: never past the token's expiry nor the rules' recheck bound
  OTA_DOWNLOAD_RECHECK_SECONDS) or declines. nginx caches only those 200s (`proxy_cache`, keyed by the image, the
  token and the identity the request presents: the verified client certificate, or in development mode the
  Authorization header), so a token presented with another certificate is never answered from another's vouch;
  the yes's last second is `stale-while-revalidate`: nginx serves ranges from it while one request renews the
  vouch in the background (`proxy_cache_background_update`), so no range waits on the app at a renewal;
- a range beyond the image is answered by nginx (416, `Content-Range: bytes */<size>`, the app's error envelope);
- a decline (401/403) and an app that could not answer (500) go to `@ota_artifact_app`: the original
  request, proxied to the app's full artifact path, which refuses and records the security event (one per refused
  request: the vouch itself records nothing), or sends the bytes through the two X-Accel-Redirect locations below.
- `whole/`: the whole image; `max_ranges 0` so nginx ignores a Range the app chose to ignore.
- `range/`: the one satisfiable range the request names; nginx applies it (one range at most) and compares If-Range
  with the same ETag the app uses, the quoted sha256 taken from the path (`etag off`: not nginx's mtime-size tag).
The app route of the vouch answers only requests carrying the vouch header with the proxy secret (only nginx's
internal location adds it), so it is no silent oracle for anyone else. One device site per nginx.conf.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ota_project.exceptions import error_body

DEFAULT_ACCEL_PREFIX = "/_ota_artifacts/"
ARTIFACT_PATH = "/device/v1/artifacts/"
VOUCH_HEADER = "X-OTA-Vouch-Auth"
VOUCH_ZONE = "ota_download_vouch"
UPSTREAM = "ota_device_app"
# nginx's own 416 (a cached vouch, a range beyond the image): the app's envelope and code; the size is in the
# Content-Range nginx sends with it, as in the app's answer.
RANGE_NOT_SATISFIABLE = json.dumps(
    error_body("range_not_satisfiable", "The range starts beyond the image (its size: Content-Range).")
)
_FORBIDDEN_IN_SECRET = "\"'\\;{} \n\r\t$"


def _indent(text: str, prefix: str = "    ") -> str:
    return "".join(f"{prefix}{line}\n" if line else "\n" for line in text.splitlines())


def nginx_artifact_locations(
    *,
    artifact_root: Path,
    proxy_headers: str,
    identity: str,
    proxy_secret: str,
    prefix: str = DEFAULT_ACCEL_PREFIX,
) -> str:
    """The artifact locations: the public URL (vouched by the app, cached, then sent by nginx), the vouch, the
    fallback to the app's full path and the two X-Accel-Redirect locations. `proxy_headers`: the proxy_set_header
    lines of the site's proxied locations; `identity`: the nginx variable naming what the request presents."""
    if any(char in proxy_secret for char in _FORBIDDEN_IN_SECRET):
        raise ValueError("the proxy secret must be URL-safe text")
    base = prefix.rstrip("/")
    sha = "[0-9a-f]{64}"
    blocks = [
        f'location ~ "^{ARTIFACT_PATH}(?<ota_sha256>{sha})/$" {{\n    rewrite ^ {base}/vouched/$ota_sha256 last;\n}}\n',
        f'location ~ "^{base}/vouched/(?<ota_sha256>(?<ota_shard>[0-9a-f]{{2}})[0-9a-f]{{62}})$" {{\n'
        "    internal;\n"
        "    set $ota_token $arg_token;\n"
        f"    auth_request {base}/vouch;\n"
        "    error_page 401 403 500 = @ota_artifact_app;\n"
        "    error_page 416 = @ota_range_not_satisfiable;\n"
        f"    alias {artifact_root}/$ota_shard/$ota_sha256;\n"
        "    max_ranges 1;\n"
        "    etag off;\n"
        "    if_modified_since off;\n"
        '    add_header ETag "\\"$ota_sha256\\"" always;\n'
        '    add_header Cache-Control "private, max-age=0, must-revalidate";\n'
        "}\n",
        f"location = {base}/vouch {{\n"
        "    internal;\n"
        f"    proxy_pass http://{UPSTREAM}{ARTIFACT_PATH}$ota_sha256/vouch/?token=$ota_token;\n"
        "    proxy_pass_request_body off;\n"
        '    proxy_set_header Content-Length "";\n'
        f"{_indent(proxy_headers)}"
        f'    proxy_set_header {VOUCH_HEADER} "{proxy_secret}";\n'
        f"    proxy_cache {VOUCH_ZONE};\n"
        f'    proxy_cache_key "$ota_sha256 $ota_token {identity}";\n'
        # Cache-Control is read: the app's yes gives its fresh seconds (max-age, as X-Accel-Expires) and its last
        # second as stale-while-revalidate, which nginx serves while one request renews the vouch in the background
        # (no range waits on the app at a renewal; devices.edge.vouch). No proxy_cache_use_stale: stale only so.
        "    proxy_ignore_headers Expires Set-Cookie Vary X-Accel-Redirect X-Accel-Limit-Rate;\n"
        "    proxy_cache_background_update on;\n"
        # No cache lock: a waiter re-polls every 500 ms, and an answer nginx may not keep (a region with a download
        # limit, OTA_DOWNLOAD_RECHECK_SECONDS=0) would queue a download's concurrent ranges behind one another.
        "    proxy_cache_lock off;\n"
        "}\n",
        "location @ota_range_not_satisfiable {\n"
        "    default_type application/json;\n"
        f"    return 416 '{RANGE_NOT_SATISFIABLE}';\n"
        "}\n",
        f"location @ota_artifact_app {{\n    proxy_pass http://{UPSTREAM}$request_uri;\n{_indent(proxy_headers)}}}\n",
    ]
    for kind, ranges in (("whole", 0), ("range", 1)):
        blocks.append(
            f'location ~ "^{base}/{kind}/(?<ota_shard>[0-9a-f]{{2}})/(?<ota_sha256>{sha})$" {{\n'
            "    internal;\n"
            f"    alias {artifact_root}/$ota_shard/$ota_sha256;\n"
            f"    max_ranges {ranges};\n"
            "    etag off;\n"
            "    if_modified_since off;\n"
            '    add_header ETag "\\"$ota_sha256\\"" always;\n'
            "}\n"
        )
    return "".join(blocks)


_PLAIN_PROXY_HEADERS = (
    "proxy_http_version 1.1;\n"
    'proxy_set_header Connection "";\n'
    "proxy_set_header Host $http_host;\n"
    "proxy_set_header X-Forwarded-For $remote_addr;\n"
    "proxy_buffering on;\n"
)


def nginx_device_site(
    *, listen: str, upstream: str, artifact_root: Path, proxy_secret: str, prefix: str = DEFAULT_ACCEL_PREFIX
) -> str:
    """A server block without TLS (development mode's secret credentials): everything proxied to the app
    (`upstream`, host:port), artifact bytes sent by nginx. The vouch cache is keyed by the Authorization header,
    so in this mode the cache files hold development credentials."""
    locations = nginx_artifact_locations(
        artifact_root=artifact_root,
        proxy_headers=_PLAIN_PROXY_HEADERS,
        identity="$http_authorization",
        proxy_secret=proxy_secret,
        prefix=prefix,
    )
    return (
        f"upstream {UPSTREAM} {{\n"
        f"    server {upstream};\n"
        "    keepalive 64;\n"
        "}\n"
        "server {\n"
        f"    listen {listen};\n"
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    location / {\n"
        f"        proxy_pass http://{UPSTREAM};\n"
        f"{_indent(_PLAIN_PROXY_HEADERS, '        ')}"
        "    }\n"
        f"{_indent(locations)}"
        "}\n"
    )


def nginx_main_conf(*, workdir: Path, servers: list[str], workers: int = 1, user: str = "") -> str:
    """A whole nginx.conf for a private nginx in `workdir` (pid, logs, temp files and the vouch cache there;
    foreground).

    `user`: whom the workers run as when nginx starts as root (they must be able to read the artifact store).
    The vouch cache holds small entries that live at most OTA_DOWNLOAD_RECHECK_SECONDS (see the module's doc)."""
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
        f"    proxy_cache_path {workdir}/vouch_cache levels=1:2 keys_zone={VOUCH_ZONE}:10m max_size=256m inactive=1m"
        " use_temp_path=off;\n"
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
    proxy_headers = (
        _PLAIN_PROXY_HEADERS
        + "proxy_set_header X-Forwarded-Proto https;\n"
        + "proxy_set_header X-OTA-Client-Cert $ssl_client_escaped_cert;\n"
        + f'proxy_set_header X-OTA-Proxy-Auth "{proxy_secret}";\n'
        + 'proxy_set_header X-OTA-TLS-Refused "";\n'
    )
    locations = nginx_artifact_locations(
        artifact_root=artifact_root,
        proxy_headers=proxy_headers,
        identity="$ssl_client_escaped_cert",
        proxy_secret=proxy_secret,
        prefix=prefix,
    )
    pattern = "|".join(re.escape(path.strip("/")) for path in proxied)
    return (
        f"upstream {UPSTREAM} {{\n"
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
        f"{_indent(locations)}"
        f'    location ~ "^/({pattern})/" {{\n'
        f"        proxy_pass http://{UPSTREAM};\n"
        f"{_indent(proxy_headers, '        ')}"
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
        f"        proxy_pass http://{UPSTREAM};\n"
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
        "}\n"
    )
