"""Receiving firmware uploads: hash while streaming, cap the size, keep the client's file name for validation.

How an upload flows (see devices/firmware/api/views.py, ReleaseListCreateView):

1. `install_hashing_handler(django_request)` runs in the view's `initialize_request`, before DRF builds its
   Request and before anything can read the body. It must be that early: for session users DRF's CSRF check
   reads `request.POST`, which parses the whole multipart body with whatever handlers are installed then.
   DRF's parsers get the handlers from the Django request (`request._request.upload_handlers`).
2. `HashingUploadHandler` refuses a body whose declared Content-Length cannot fit (before reading a byte),
   then streams each file part into a temp file in FILE_UPLOAD_TEMP_DIR, updating a sha256 per chunk (64 KiB at
   a time; the image is never held in memory). Past settings.ARTIFACT_MAX_BYTES it deletes the temp file and
   stops the upload; the view sees `handler.too_large` and answers 413 `artifact_too_large`.
3. `ArtifactMultiPartParser` keeps the file name exactly as the client sent it (Django's parser would silently
   strip `../` and drop `..`), so the allow-list can refuse path tricks with a 400 instead of guessing.
   The name never becomes a path: the store uses the server's sha256 (devices/firmware/storage.py).
4. The view turns the upload into a `ReceivedArtifact` (sha256, size, temp path) for the service, and in a
   `finally` deletes every temp file of the request, whatever the outcome.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import HttpRequest, QueryDict
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from django.utils.datastructures import MultiValueDict
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles, MultiPartParser

from devices.firmware.storage import ReceivedArtifact, iter_file, receive_stream

# Room for the form fields and multipart framing next to the image in one request body.
MULTIPART_FRAMING_BYTES = 64 * 1024


class HashedUploadedFile(TemporaryUploadedFile):
    """A streamed-to-disk upload that knows its sha256 and the file name exactly as the client sent it."""

    def __init__(self, client_name: str, content_type: str, charset: str | None, content_type_extra: Any) -> None:
        # The temp file's name is fixed: the client's name must not influence any path, not even a suffix.
        super().__init__("artifact", content_type, 0, charset, content_type_extra)
        self.client_name = client_name
        self.sha256 = ""


class HashingUploadHandler(TemporaryFileUploadHandler):
    """Streams file parts to temp files, computing sha256 chunk by chunk; stops past `max_bytes` per file."""

    file: HashedUploadedFile

    def __init__(self, request: HttpRequest | None = None, *, max_bytes: int, max_request_bytes: int) -> None:
        super().__init__(request)
        self.max_bytes = max_bytes
        self.max_request_bytes = max_request_bytes
        self.too_large = False
        self.files: list[HashedUploadedFile] = []
        self._digest: Any = None
        self._received = 0

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: bytes,  # type: ignore[override]  # Django passes the boundary as bytes; the stubs say str
        encoding: str | None = None,
    ) -> tuple[QueryDict, MultiValueDict] | None:
        # A body that declares more than an image plus its form can hold is refused unread.
        if content_length > self.max_request_bytes:
            self.too_large = True
            return QueryDict(encoding=encoding), MultiValueDict()
        return None

    def new_file(
        self,
        field_name: str,
        file_name: str,
        content_type: str,
        content_length: int | None,
        charset: str | None = None,
        content_type_extra: Any = None,
    ) -> None:
        self.field_name = field_name
        self.file_name = file_name
        self.content_type = content_type
        self.content_length = content_length
        self.charset = charset
        self.content_type_extra = content_type_extra
        if content_length is not None and content_length > self.max_bytes:
            self._refuse()
        self.file = HashedUploadedFile(file_name, content_type, charset, content_type_extra)
        self.files.append(self.file)
        self._digest = hashlib.sha256()
        self._received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self._received += len(raw_data)
        if self._received > self.max_bytes:
            self._refuse()
        self._digest.update(raw_data)
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile:
        self.file.flush()
        self.file.seek(0)
        self.file.size = file_size
        self.file.sha256 = self._digest.hexdigest()
        return self.file

    def _refuse(self) -> None:
        self.too_large = True
        self.cleanup()
        # connection_reset=False: Django reads and drops the rest of the body (bounded by max_request_bytes),
        # so the client gets the 413 instead of a reset connection.
        raise StopUpload(connection_reset=False)

    def cleanup(self) -> None:
        """Close, and so delete, every temp file this handler created (idempotent)."""
        for uploaded in self.files:
            uploaded.close()


def install_hashing_handler(request: HttpRequest) -> HashingUploadHandler | None:
    """Make the hashing handler the only upload handler of this request (call before the body is read).

    Returns None if something already parsed the body; `received_from_upload` then hashes the parsed file.
    """
    max_bytes = int(settings.ARTIFACT_MAX_BYTES)
    form_bytes = int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
    handler = HashingUploadHandler(
        request, max_bytes=max_bytes, max_request_bytes=max_bytes + form_bytes + MULTIPART_FRAMING_BYTES
    )
    try:
        request.upload_handlers = [handler]
    except AttributeError:  # Django refuses once the upload has been processed
        return None
    return handler


class _RawNameMultiPartParser(DjangoMultiPartParser):
    """Django's multipart parser, minus the silent file-name cleanup (the allow-list decides instead)."""

    def sanitize_file_name(self, file_name: str) -> str | None:
        return file_name or None


class ArtifactMultiPartParser(MultiPartParser):
    """DRF multipart parser that hands the client's raw file name to the hashing handler."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        parser_context = parser_context or {}
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        upload_handlers = request.upload_handlers
        # Raw names are safe only with handlers that never build a path from them.
        parser_class = (
            _RawNameMultiPartParser
            if all(isinstance(handler, HashingUploadHandler) for handler in upload_handlers)
            else DjangoMultiPartParser
        )
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            data, files = parser_class(meta, stream, upload_handlers, encoding).parse()
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error - {exc}") from exc
        return DataAndFiles(data, files)


def client_file_name(uploaded: UploadedFile) -> str:
    """The file name as the client sent it (raw when the hashing parser received it)."""
    return str(getattr(uploaded, "client_name", None) or uploaded.name or "")


def received_from_upload(uploaded: UploadedFile, *, max_bytes: int) -> ReceivedArtifact:
    """The (sha256, size, temp path) of an upload; hashes it now if another handler received it."""
    if isinstance(uploaded, HashedUploadedFile) and uploaded.sha256:
        return ReceivedArtifact(
            sha256=uploaded.sha256, size_bytes=int(uploaded.size or 0), temp_path=Path(uploaded.temporary_file_path())
        )
    uploaded.seek(0)
    return receive_stream(iter_file(uploaded), max_bytes=max_bytes)


def close_uploads(files: Any, handler: HashingUploadHandler | None) -> None:
    """Close (and so delete) every temp file of a request: parsed files and any a failed parse left behind."""
    # `files` is DRF's `_files`: a MultiValueDict once parsed, a sentinel class before (e.g. on 415).
    if isinstance(files, MultiValueDict):
        for _, uploads in files.lists():
            for uploaded in uploads:
                uploaded.close()
    if handler is not None:
        handler.cleanup()
