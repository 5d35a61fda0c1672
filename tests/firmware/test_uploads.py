"""The upload handler hashes while streaming to disk and stops at the size limit."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.test import RequestFactory

from devices.firmware.uploads import HashedUploadedFile, HashingUploadHandler
from tests.firmware.conftest import files_under, image_bytes


def _handler(max_bytes: int) -> HashingUploadHandler:
    return HashingUploadHandler(RequestFactory().post("/"), max_bytes=max_bytes, max_request_bytes=max_bytes + 4096)


def test_handler_hashes_chunk_by_chunk_into_a_temp_file(tmp_path):
    content = image_bytes(200_000)
    handler = _handler(max_bytes=10**6)
    handler.new_file("file", "../raw name.bin", "application/octet-stream", None)
    as_django_sees_it: FileUploadHandler = handler  # whose receive_data_chunk may hand bytes on to the next handler
    for start in range(0, len(content), 65536):
        # None: nothing is handed on (nothing kept in memory)
        assert as_django_sees_it.receive_data_chunk(content[start : start + 65536], start) is None
    uploaded = handler.file_complete(len(content))

    assert isinstance(uploaded, HashedUploadedFile)
    assert uploaded.sha256 == hashlib.sha256(content).hexdigest()
    assert uploaded.size == len(content)
    assert uploaded.client_name == "../raw name.bin"  # kept verbatim for the allow-list, never used as a path
    assert uploaded.temporary_file_path().startswith(str(tmp_path))
    assert open(uploaded.temporary_file_path(), "rb").read() == content
    handler.cleanup()
    assert files_under(tmp_path) == []


def test_handler_stops_past_the_limit_and_deletes_its_temp_file(tmp_path):
    handler = _handler(max_bytes=100_000)
    handler.new_file("file", "tcu.bin", "application/octet-stream", None)
    handler.receive_data_chunk(b"a" * 65536, 0)
    with pytest.raises(StopUpload):
        handler.receive_data_chunk(b"b" * 65536, 65536)
    assert handler.too_large
    assert files_under(tmp_path) == []


def test_handler_refuses_a_body_that_declares_more_than_it_may_hold_before_reading_it():
    handler = _handler(max_bytes=1000)
    refused = handler.handle_raw_input(None, {}, 1000 + 4096 + 1, b"b")
    assert refused is not None  # answered without reading the body
    data, files = refused
    assert handler.too_large and not data and not files
    assert _handler(max_bytes=1000).handle_raw_input(None, {}, 5000, b"b") is None
