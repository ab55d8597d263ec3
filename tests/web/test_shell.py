"""The app shell's server side: the header's links by role, "back" for a launched session, and
the ``when`` filter that replaced microsecond ISO times on the admin pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flask import Flask, g, render_template_string

from app.web.shell import app_shell, counted, when
from app.workflow.accounts import WebLogin
from app.workflow.tokens import Caller


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """An EMR allowed to launch the app, so that the launch patient's page exists."""
    return {"smart_issuers": json.dumps({"http://127.0.0.1:9/fhir": {"client_id": "ebiw"}})}


def _shell_of(app: Flask, caller: Caller | None, path: str = "/") -> tuple[list[str], str]:
    with app.test_request_context(path):
        g.web_login = WebLogin(caller, "token", datetime.now(UTC)) if caller else None
        shell = app_shell()
        return [link.label for link, _ in shell.links()], shell.home


def test_links_follow_the_role_and_back_leads_to_the_launch_patient(app: Flask) -> None:
    assert _shell_of(app, None) == ([], "/")
    assert _shell_of(app, Caller("v", "view")) == (["Capture"], "/")
    assert _shell_of(app, Caller("c", "capture")) == (["Capture", "Batch"], "/")
    assert _shell_of(app, Caller("a", "admin"))[0] == [
        "Capture", "Batch", "Deliveries", "Audit", "Exports", "Accounts", "Corrections",
        "Retention"]
    launched = Caller("c", "capture", patient=("HOSP-A", "00123456"))
    assert _shell_of(app, launched)[1] == "/launch/patient"
    with app.test_request_context("/admin/audit"):
        g.web_login = WebLogin(Caller("a", "admin"), "token", datetime.now(UTC))
        html = render_template_string('{% from "partials/header.html" import app_header '
                                      'with context %}{{ app_header(app_shell()) }}')
    assert '<a href="/admin/audit" aria-current="page">Audit</a>' in html
    assert '<input type="hidden" name="csrf_token" value="token">' in html


def test_when_shows_a_human_utc_time_in_a_time_element() -> None:
    assert when("2026-12-06T23:42:50.123456+01:00") == (
        '<time datetime="2026-12-06T22:42:50+00:00">6 Dec 2026, 22:42 UTC</time>')
    assert when(datetime(2026, 1, 2, 3, 4, 5)) == (
        '<time datetime="2026-01-02T03:04:05+00:00">2 Jan 2026, 03:04 UTC</time>')
    assert when(None) == "" and when("") == ""


def test_counted_says_one_in_the_singular_and_any_other_number_in_the_plural() -> None:
    assert [counted(n, "photo") for n in (0, 1, 2)] == ["0 photos", "1 photo", "2 photos"]
    assert [counted(n, "study", "studies") for n in (1, 3)] == ["1 study", "3 studies"]
