"""Who sees the Corrections link, and what the page gives them: admins always (the UID forms);
a clinician (role ``capture``) only while ``EBIW_CORRECTION_WINDOW_MINUTES`` is above 0, and
then a page listing the studies they captured in that window, a Reject button per photo and a
move form per study, which work; a viewer never. No link leads to a 403."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import CaptureSession, Instance, utcnow
from app.workflow.accounts import create_user
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    log_in,
    served_as_deployed,
    services,
)
from tests.delivery.conftest import NOCHART

SESSION = {"patient": {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE",
                       "birth_date": "1950-03-14", "sex": "F"},
           "encounter": "ENC1001", "body_site": "14975008", "laterality": "L"}


class _Forms(HTMLParser):
    """The links and forms of a page: hrefs, and each form's action and hidden/select values."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.forms: list[dict[str, str]] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a":
            self.links.append(a.get("href", ""))
        elif tag == "form":
            self.forms.append({"_action": a.get("action", "")})
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1][a["name"]] = a.get("value", "")
        elif tag == "select" and self.forms:
            self._select = a.get("name")
        elif tag == "option" and self.forms and self._select \
                and self._select not in self.forms[-1]:
            self.forms[-1][self._select] = a.get("value", "")


def parsed(html: str) -> _Forms:
    page = _Forms()
    page.feed(html)
    return page


def visible_links(html: str) -> list[str]:
    """The header links a browser shows: those not rendered hidden, and on the capture app
    page (whose script shows links by role) those whose ``data-roles`` name the role."""
    return re.findall(r'<li><a href="([^"]+)"', html)


def capture(client: FlaskClient, photos: int = 2) -> tuple[str, list[str]]:
    """A study captured by the client's user with ``photos`` photos: (its UID, SOP UIDs)."""
    token = {"X-CSRF-Token": client.get("/api/v1/me").get_json().get("csrf_token", "")}
    session = client.post("/api/v1/sessions", json=SESSION, headers=token).get_json()
    uids = [client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                       data=NOCHART.read_bytes(), headers=token).get_json()["sop_instance_uid"]
            for _ in range(photos)]
    return session["study_instance_uid"], uids


def _users(app: Flask) -> None:
    for name, role in (("ada", "admin"), ("cal", "capture"), ("bea", "capture"),
                       ("vic", "view")):
        create_user(services(app).db, name, PASSWORD, role)


@pytest.fixture
def app_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return {"color_normalization": False, "emr_notifiers": "",
            "correction_window_minutes": getattr(request, "param", 0)}


@pytest.mark.parametrize("app_overrides", [0], indirect=True)
def test_without_a_window_only_admins_see_and_open_corrections(app: Flask) -> None:
    _users(app)
    for name, sees in (("ada", True), ("cal", False), ("vic", False)):
        client = app.test_client()
        log_in(client, name)
        batch_or_home = client.get("/batch" if name != "vic" else f"/studies/{uuid.uuid4()}")
        shown = "/admin/corrections" in visible_links(batch_or_home.get_data(as_text=True))
        roles = re.search(r'<li data-roles="([^"]*)" hidden><a href="/admin/corrections"',
                          client.get("/").get_data(as_text=True))
        assert roles is not None and roles.group(1) == "admin"
        assert shown == sees, name
        assert client.get("/admin/corrections").status_code == (200 if sees else 403), name


@pytest.mark.parametrize("app_overrides", [30], indirect=True)
def test_a_clinician_corrects_their_own_recent_studies_from_the_page(app: Flask) -> None:
    _users(app)
    cal, bea, vic = app.test_client(), app.test_client(), app.test_client()
    csrf = {name: log_in(client, name) for client, name in ((cal, "cal"), (bea, "bea"),
                                                             (vic, "vic"))}
    mine, (first, second) = capture(cal)
    old, _ = capture(cal, photos=1)
    theirs, _ = capture(bea, photos=1)
    with services(app).db.session() as db:  # one of cal's studies is past the window
        for session in db.query(CaptureSession).filter_by(study_uid=old):
            session.created_at = utcnow() - timedelta(minutes=31)

    # The link: for clinicians now (server pages and the capture app's role filter), not viewers
    assert "/admin/corrections" in visible_links(cal.get("/batch").get_data(as_text=True))
    roles = re.search(r'<li data-roles="([^"]*)" hidden><a href="/admin/corrections"',
                      cal.get("/").get_data(as_text=True))
    assert roles is not None and roles.group(1).split() == ["admin", "capture"]
    assert vic.get("/admin/corrections").status_code == 403

    page = cal.get("/admin/corrections")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "for 30 minutes" in html and 'id="instance"' not in html  # no UID typing
    found = parsed(html)
    rejects = [f for f in found.forms if f["_action"] == "/admin/corrections/reject"]
    moves = [f for f in found.forms if f["_action"] == "/admin/corrections/patient"]
    assert [f["instance"] for f in rejects] == [first, second]  # not the old nor bea's
    assert [f["study"] for f in moves] == [mine]
    assert f"/studies/{mine}" in found.links
    for uid in (old, theirs):
        assert uid not in html
    thumbnails = re.findall(r'<img src="([^"]+/thumbnail)"', html)
    assert len(thumbnails) == 2
    assert all(cal.get(src).status_code == 200 for src in thumbnails)

    preview = cal.post("/admin/corrections/reject", data=rejects[0])
    assert preview.status_code == 200 and "DEMO, ALICE" in preview.get_data(as_text=True)
    confirm = parsed(preview.get_data(as_text=True)).forms[-1]
    assert confirm == {**rejects[0], "confirmed": "yes"}
    done = cal.post("/admin/corrections/reject", data=confirm)
    assert done.status_code == 200 and "Rejected" in done.get_data(as_text=True)
    with services(app).db.session() as db:
        row = db.get(Instance, first)
        assert row is not None and row.rejection_code == "113001"
    after = parsed(cal.get("/admin/corrections").get_data(as_text=True))
    assert [f["instance"] for f in after.forms if "instance" in f] == [second]

    # bea's page lists bea's study only; her forms cannot reach cal's
    assert [f.get("study") for f in parsed(bea.get("/admin/corrections").get_data(
        as_text=True)).forms if "study" in f] == [theirs]
    forged = bea.post("/admin/corrections/reject",
                      data={**rejects[1], "csrf_token": csrf["bea"]})
    assert forged.status_code == 403 and "for 30 minutes" in forged.get_data(as_text=True)


@pytest.mark.parametrize("app_overrides", [30], indirect=True)
def test_the_clinicians_page_fits_a_phone_and_is_accessible(
        app: Flask, chromium: Browser, axe_script: Path) -> None:
    _users(app)

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        context = browser.new_context(**PHONE, bypass_csp=True)
        assert context.request.post(f"{url}/login", data={
            "username": "cal", "password": PASSWORD}).ok
        page = context.new_page()
        page.goto(f"{url}/admin/corrections")
        page.wait_for_selector(".own-photos img")
        page.wait_for_function("[...document.querySelectorAll('.own-photos img')]"
                               ".every((i) => i.complete && i.naturalWidth > 0)")
        seen = {"width": page.evaluate("document.documentElement.scrollWidth"),
                "small": page.evaluate(TAP_TARGETS),
                "nav": page.locator(".appnav li:visible").all_text_contents()}
        page.screenshot(path=str(ARTIFACTS / "phone-corrections-clinician.png"),
                        full_page=True)
        page.add_script_tag(path=str(axe_script))
        seen["axe"] = page.evaluate(AXE_RUN)
        context.close()
        return seen

    with served_as_deployed(app) as (url, _):  # before any request: it adds a hook
        cal = app.test_client()
        log_in(cal, "cal")
        capture(cal)
        seen = chromium.run(lambda browser: scenario(browser, url))
    assert seen["nav"] == ["Capture", "Batch", "Corrections"]
    assert seen["width"] <= 390 and seen["small"] == [] and seen["axe"] == []
