"""An upload handler that refuses import files over the size limit while they stream, before they reach disk."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadhandler import FileUploadHandler, SkipFile

from devices import importer


class ImportSizeLimitHandler(FileUploadHandler):
    """Placed first in the chain: passes chunks on until a file passes MAX_IMPORT_BYTES, then skips that file.

    The view asks `exceeded` afterwards, so the client gets a clear 400 instead of "no file was submitted".
    """

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > importer.MAX_IMPORT_BYTES:
            self.exceeded = True
            raise SkipFile()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
