"""The one way JSON from a request is read: a 400, never a 500 and never a silent guess, for JSON that Python can
decode but that nothing downstream can carry or that says two things at once (a duplicated key)."""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Longest key quoted back in an error message (keys are client input; the message is echoed in the answer).
_QUOTED_KEY_MAX = 80


class JSONBodyError(ValueError):
    """JSON from a request that must be refused: malformed, a duplicated key, NaN/Infinity, too deep, a lone surrogate."""


def _quoted(key: str) -> str:
    # json.dumps escapes non-ASCII and unpaired surrogates, so the message is always valid UTF-8.
    text = key if len(key) <= _QUOTED_KEY_MAX else key[:_QUOTED_KEY_MAX] + "..."
    return json.dumps(text)


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() in C, and a look at the pairs only when one went missing: large bodies (telemetry batches of 500
    # objects) are parsed at close to json.loads speed.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONBodyError(f"the key {_quoted(key)} appears more than once in the same object")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise JSONBodyError(f"{name} is not a JSON number")


def json_loads_strict(text: str | bytes) -> Any:
    """Parse JSON that came from a request, refusing duplicated keys at any depth (the last one would silently win),
    NaN/Infinity, absurd nesting and escaped unpaired surrogates ("\\ud800") with a `JSONBodyError`."""
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicate_keys, parse_constant=_reject_constant)
    except JSONBodyError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONBodyError(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise JSONBodyError("the document is nested too deeply") from None
    except (ValueError, TypeError) as exc:  # bytes that are not UTF-8, UTF-16 or UTF-32
        raise JSONBodyError(str(exc)) from None
    escaped = b"\\u" in text if isinstance(text, bytes) else "\\u" in text
    if text.isascii() and not escaped:
        # ASCII without a \u escape cannot hold a surrogate, and json.loads just walked the nesting: the check below
        # (a second pass over the whole value) is needed only for the rest.
        return value
    try:
        # Such values would otherwise fail where they reach PostgreSQL or are echoed in an error message.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JSONBodyError("the text contains an unpaired surrogate escape") from None
    except (RecursionError, ValueError):
        raise JSONBodyError("the document is nested too deeply") from None
    return value


class SafeJSONParser(JSONParser):
    """DRF's JSONParser reading through `json_loads_strict`: every refusal is a 400 parse error that says why."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json_loads_strict(text)
        except (JSONBodyError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}.") from None


class StrictJSONField(serializers.JSONField):
    """A serializer JSONField whose JSON-text input (form and multipart bodies) is read by `json_loads_strict`."""

    default_error_messages = {"invalid_json": "Not valid JSON: {reason}."}

    def to_internal_value(self, data: Any) -> Any:
        if self.binary or getattr(data, "is_json_string", False):
            if isinstance(data, bytes):
                data = data.decode()
            try:
                data = json_loads_strict(data)
            except (JSONBodyError, UnicodeDecodeError) as exc:
                self.fail("invalid_json", reason=exc)
            return data
        return super().to_internal_value(data)
