"""``Server-Timing: app;dur=…``: the server's share, from the body received to the response."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.test import Client

from app.web.timing import ServerTiming


def app(before_body: float, after_body: float) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that waits, reads the whole body, waits again, answers 200."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        time.sleep(before_body)  # as if the bytes were still on their way
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        time.sleep(after_body)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    return wsgi


def duration(response: Any) -> float:
    return float(response.headers["Server-Timing"].removeprefix("app;dur="))


def test_the_clock_starts_once_the_body_is_read() -> None:
    client = Client(ServerTiming(app(before_body=0.3, after_body=0.05)))
    response = client.put("/", data=b"x" * 100_000)
    assert response.get_data() == b"100000"
    assert 50 <= duration(response) < 250


def test_without_a_body_the_clock_starts_with_the_request() -> None:
    response = Client(ServerTiming(app(before_body=0.1, after_body=0))).get("/")
    assert duration(response) >= 100
