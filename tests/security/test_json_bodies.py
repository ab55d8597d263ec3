"""JSON bodies, through the one parser of every JSON-reading route: nesting bounded before
parsing, text no database can hold refused naming the field, the 1 MiB cap on any JSON type."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.web.security import MAX_JSON_DEPTH

ROUTES = ("/api/v1/sessions", "/api/v1/batches", "/api/v1/patients/search",
          "/api/v1/identify")
"""JSON-reading routes of the capture role (each parses before it validates)."""


def nested(depth: int, inner: Any = 1) -> Any:
    """``inner`` inside ``depth`` objects and arrays, alternating, the outermost an object."""
    value = inner
    for level in range(depth):
        value = {"a": value} if (depth - level) % 2 else [value]
    return value


def post_json(client: FlaskClient, headers: dict[str, str], route: str, body: str | bytes,
              content_type: str = "application/json") -> Any:
    return client.post(route, data=body, headers={**headers, "Content-Type": content_type})


@pytest.mark.parametrize("route", ROUTES)
def test_deep_nesting_is_refused_before_parsing_with_a_clear_400(
        client: FlaskClient, auth: dict[str, dict[str, str]], route: str) -> None:
    answer = post_json(client, auth["capture"], route, "[" * 100_000 + "]" * 100_000)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:200]
    assert answer.get_json()["error"] == {
        "code": "invalid_json",
        "message": f"the JSON body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"}


def test_the_depth_limit_is_exact_and_brackets_in_strings_do_not_count(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]

    def session(evidence_depth: int, text: str = "") -> Any:
        body = {"patient": {"id": "1", "issuer": "LOCAL"},
                "identification": {"method": "typed", "evidence": nested(evidence_depth, text)}}
        return post_json(client, capture, "/api/v1/sessions", json.dumps(body))

    # the body's object and identification's: 2 levels around the evidence
    at_limit = session(MAX_JSON_DEPTH - 2)
    assert at_limit.status_code == 201, at_limit.get_json()
    over = session(MAX_JSON_DEPTH - 1)
    assert over.status_code == 400
    assert over.get_json()["error"]["code"] == "invalid_json"
    brackets = session(MAX_JSON_DEPTH - 2, '[[[{{{"\\"[[[' * 20)
    assert brackets.status_code == 201, brackets.get_json()


@pytest.mark.parametrize(("body", "message"), [
    ('{"patient": {"id": "12\\u00003", "issuer": "LOCAL"}}',
     "the field patient.id holds a NUL character or a lone surrogate"),
    ('{"patient": {"id": "1", "issuer": "LOCAL"}, "identification": {"method": "typed", '
     '"evidence": {"reads": ["ok", "\\ud800"]}}}',
     "the field identification.evidence.reads[1] holds a NUL character or a lone surrogate"),
    ('{"patient": {"id": "1", "issuer": "LOCAL", "x\\u0000y": 1}}',
     "a field name in patient holds a NUL character or a lone surrogate"),
    ('"\\u0000"', "the JSON body holds a NUL character or a lone surrogate"),
])
def test_unstorable_text_names_the_field(client: FlaskClient, auth: dict[str, dict[str, str]],
                                         body: str, message: str) -> None:
    answer = post_json(client, auth["capture"], "/api/v1/sessions", body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == {"code": "invalid_json", "message": message}


def test_field_names_that_are_no_plain_names_are_not_echoed(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    body = '{"patient": {"id": "1", "issuer": "LOCAL"}, "Smith John": {"a": "\\u0000"}}'
    answer = post_json(client, auth["capture"], "/api/v1/sessions", body)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["message"] == (
        "the field (a field).a holds a NUL character or a lone surrogate")


def test_unreadable_json_is_still_the_routes_own_answer(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    answer = post_json(client, auth["capture"], "/api/v1/sessions", '{"patient": ')
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "invalid"


def test_every_json_media_type_is_capped_at_one_mebibyte(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    body = json.dumps({"patient": {"id": "1", "issuer": "LOCAL"}, "description": "x" * 1_100_000})
    answer = post_json(client, auth["capture"], "/api/v1/sessions", body,
                       content_type="application/vnd.example+json")
    assert answer.status_code == 413


def test_escaped_pairs_and_backslashes_are_not_taken_for_unstorable_text(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    """A surrogate pair (an emoji) and an escaped backslash before u0000 are plain text."""
    body = ('{"patient": {"id": "1", "issuer": "LOCAL"}, "identification": {"method": "typed", '
            '"evidence": {"note": "\\ud83d\\ude00 \\\\u0000"}}}')
    answer = post_json(client, auth["capture"], "/api/v1/sessions", body)
    assert answer.status_code == 201, answer.get_json()
