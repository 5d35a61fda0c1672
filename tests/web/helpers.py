"""Helpers shared by the page tests: a test client signed in as someone, and a response's HTML, text and messages."""

from __future__ import annotations

import re

from django.test import Client


def page_client(user=None) -> Client:
    """A browser-like test client, signed in as `user` (anonymous when None)."""
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def html_of(response) -> str:
    """The response body as text."""
    return response.content.decode()


def text_of(response) -> str:
    """The page's visible text with tags removed and whitespace collapsed (for sentence assertions)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_of(response)))


def messages_of(response) -> list[str]:
    """The flash messages the request produced (those still queued for the next page included)."""
    return [str(m) for m in response.wsgi_request._messages]
