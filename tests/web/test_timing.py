"""``Server-Timing: app;dur=…``: the server's share, from the body received to the response."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client

from app.web.timing import ServerTiming
from tests.conftest import log_in


def wsgi_app(before_body: float, after_body: float) -> Callable[..., Iterable[bytes]]:
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
    client = Client(ServerTiming(wsgi_app(before_body=0.3, after_body=0.05), always=True))
    response = client.put("/", data=b"x" * 100_000)
    assert response.get_data() == b"100000"
    assert 50 <= duration(response) < 250


def test_without_a_body_the_clock_starts_with_the_request() -> None:
    response = Client(ServerTiming(wsgi_app(before_body=0.1, after_body=0),
                                     always=True)).get("/")
    assert duration(response) >= 100


def test_off_by_default_the_header_goes_to_admins_only(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    client = app.test_client()
    assert "Server-Timing" not in client.get("/api/v1/body-sites",
                                             headers=auth["capture"]).headers
    assert "Server-Timing" not in client.get("/api/v1/body-sites").headers  # 401
    answer = client.get("/api/v1/body-sites", headers=auth["admin"])
    assert answer.status_code == 200 and duration(answer) > 0


def test_an_admin_logged_in_on_the_web_gets_it_too(app: Flask,
                                                   users: dict[str, str]) -> None:
    client = app.test_client()
    log_in(client, users["admin"])
    assert duration(client.get("/api/v1/me")) > 0
    other = app.test_client()
    log_in(other, users["capture"])
    assert "Server-Timing" not in other.get("/api/v1/me").headers


@pytest.mark.parametrize("app_overrides", [{"server_timing": True}])
def test_when_enabled_every_response_has_it(app: Flask,
                                            auth: dict[str, dict[str, str]]) -> None:
    client = app.test_client()
    assert duration(client.get("/api/v1/body-sites", headers=auth["capture"])) > 0
    assert duration(client.get("/healthz")) >= 0
