"""A JSON parser that answers 400, never 500, for input Python can decode but nothing downstream can carry."""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSONParser, plus a 400 for absurdly deep nesting and for escaped unpaired surrogates ("\\ud800").

    Both would otherwise surface as a 500: the first as a RecursionError in the decoder, the second when the
    value reaches PostgreSQL or is echoed in an error message that must be encoded as UTF-8.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError("JSON parse error - the text contains an unpaired surrogate escape.") from None
        except (RecursionError, ValueError):
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        return data
