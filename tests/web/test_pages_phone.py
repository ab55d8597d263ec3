"""Every page at phone size (a Pixel 7, 390×844) in Debian's Chromium, light and dark: nothing
wider than the screen, every control a tap target of at least 44×44 px, axe-core finding no
serious or critical violation, the app bar with the user and Log out on every logged-in page,
the links of the user's role, a way back from the viewer, human times on the admin pages.

The pages are served under the CSP of a deployment; only axe runs in a context that bypasses it
(axe is injected as a script). Screenshots go to tests/.artifacts/phone-<page>-<scheme>.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db.models import ApiToken, AuditEvent, LegalHold, LoginThrottle, Photo
from app.pipeline import quality
from app.pipeline.color.detect import find_chart
from app.workflow import audit
from app.workflow.accounts import create_user, set_disabled
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    CHARTS,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    log_in,
    served_as_deployed,
    services,
)
from tests.viewer.conftest import CHART, photo, upload_study

SCHEMES = ("light", "dark")
HEEL = "84607009"  # skin of heel
LOCKED, DISABLED = "night.nurse", "left.nurse"
"""Accounts for the accounts page: one locked out after failed logins, one disabled."""


BACKGROUND_LUMINANCE = """() => {
  const [r, g, b] = getComputedStyle(document.documentElement).backgroundColor
    .match(/[\\d.]+/g).slice(0, 3).map((v) => { const c = v / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}"""



@dataclass(frozen=True)
class PageSpec:
    """One page to check: where, as whom, what shows that it is ready, and what to do first."""

    name: str
    path: str
    role: str | None
    ready: str
    act: Callable[[Any], None] | None = None


def _add_photo_to_batch(page: Any) -> None:
    """Send one photo, so that the review with the "add a patient by MRN" row shows."""
    page.set_input_files("#files", str(CHARTS / CHART))
    page.wait_for_selector("#review:not([hidden])", timeout=60_000)


def _start_capture(page: Any) -> None:
    """Go on to the capture app's "identify the patient" screen (no camera here)."""
    page.click("#start")
    page.wait_for_selector("#screen-identify:not([hidden])")



def _refused_rejection(page: Any) -> None:
    """Submit a rejection of an unknown instance: the page answers with its error."""
    page.fill("#instance", "1.2.3.4")
    page.click("form[action$='/reject'] button[type=submit]")
    page.wait_for_selector("p.alert[role=alert]")


def _ask_to_export(study_uid: str) -> Callable[[Any], None]:
    """Type the study's UID on the exports page and tap Review: the page asks to confirm."""
    def act(page: Any) -> None:
        page.fill("#studies", study_uid)
        page.click("main button:text-is('Review the export')")
        page.wait_for_selector("#confirm-title")
    return act


def _export(study_uid: str) -> Callable[[Any], None]:
    """Ask to export the study, then Confirm: the page shows the export and its download."""
    def act(page: Any) -> None:
        _ask_to_export(study_uid)(page)
        page.click("#confirm-title ~ form :text-is('Confirm export')")
        page.wait_for_selector("#result-title")
    return act


def _ask_to_release(page: Any) -> None:
    """Tap Release on the legal hold: the page asks to confirm it."""
    page.click("form[action$='/release'] button")
    page.wait_for_selector("#confirm-title")


def _ask_to_revoke(page: Any) -> None:
    """Tap Revoke on the first token: the page asks to confirm it."""
    page.click("form[action$='/revoke'] button")
    page.wait_for_selector("#confirm-title")


def _ask_to_disable(page: Any) -> None:
    """Tap Disable on the first account that has it: the page asks to confirm it."""
    page.click("form[action$='/disable'] button")
    page.wait_for_selector("#confirm-title")


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """A PACS destination (never reached: deliveries stay queued for the admin page to list);
    an EMR allowed to launch the app (never asked: the launch page is shown unlaunched); no
    colour step (the photos are only shown); retention rules under which every study is due
    (the retention page lists the stored one) but a heel's of a patient without a birth date
    (a minor clause: undetermined)."""
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": [
        {"name": "pacs", "type": "stow-rs", "url": "http://127.0.0.1:9/dicomweb"}]}))
    rules = tmp_path / "retention.json"
    rules.write_text(json.dumps({"default": {"years_after_last_study": 0}, "rules": [
        {"name": "heel", "body_site": HEEL, "years_after_last_study": 0, "minor_age": 18}]}))
    return {"color_normalization": False, "destinations_file": config, "emr_notifiers": "",
            "retention_rules_file": rules,
            "smart_issuers": json.dumps({"http://127.0.0.1:9/fhir": {"client_id": "ebiw"}})}


@dataclass(frozen=True)
class Site:
    """The served app: its base URL, a stored study, the user name of each role."""

    url: str
    study_uid: str
    users: dict[str, str]


@pytest.fixture
def site(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
         users: dict[str, str]) -> Iterator[Site]:
    """The app as deployed, with one study of the chart photo stored, and its quality record
    (measured here: the colour step that would measure it is off) for the viewer's card; a
    legal hold on another patient for the retention page to list; an account locked out
    after failed logins and a disabled one for the accounts page, besides the role's accounts
    and their API tokens."""
    bgr = cv2.imread(str(CHARTS / CHART))
    record = quality.assess(bgr, find_chart(bgr)).as_json()
    db = services(app).db
    for name in (LOCKED, DISABLED):
        create_user(db, name, PASSWORD, "capture")
    set_disabled(db, DISABLED, True, by=audit.Actor("test-admin"))
    with served_as_deployed(app) as (url, _):
        study = upload_study(client, auth["capture"], [photo(CHART)])
        with db.session() as session:
            session.execute(update(Photo).values(quality=record))
            session.add(LegalHold(issuer="HOSP-A", patient_id="00999999",
                                  reason="pending claim", set_by="ada"))
            session.add(LoginThrottle(username=LOCKED, failures=0,
                                      last_failure_at=datetime.now(UTC),
                                      locked_until=datetime.now(UTC) + timedelta(minutes=15)))
        yield Site(url, study.study_uid, users)


def pages(site: Site) -> list[PageSpec]:
    """Every HTML page of the app, as the role that uses it (None: logged out)."""
    return [
        PageSpec("login", "/login", None, "#plain-username"),
        PageSpec("capture-login", "/", None, "#screen-login:not([hidden])"),
        PageSpec("capture-home", "/", "capture", "#screen-home:not([hidden])"),
        PageSpec("capture-identify", "/", "capture", "#screen-home:not([hidden])",
                 _start_capture),
        PageSpec("batch", "/batch", "capture", "#batch:not([hidden])", _add_photo_to_batch),
        PageSpec("viewer", f"/studies/{site.study_uid}", "view", "body[data-ready=true]"),
        PageSpec("launch-patient", "/launch/patient", "view", "#message:not([hidden])"),
        PageSpec("deliveries", "/admin/deliveries", "admin", "main h1"),
        PageSpec("audit", "/admin/audit", "admin", "main h1"),
        PageSpec("exports", "/admin/exports", "admin", "main h1"),
        PageSpec("exports-preview", "/admin/exports", "admin", "main h1",
                 _ask_to_export(site.study_uid)),
        PageSpec("exports-done", "/admin/exports", "admin", "main h1", _export(site.study_uid)),
        PageSpec("corrections", "/admin/corrections", "admin", "main h1"),
        PageSpec("corrections-refused", "/admin/corrections", "admin", "main h1",
                 _refused_rejection),
        PageSpec("retention", "/admin/retention", "admin", "main h1"),
        PageSpec("retention-release", "/admin/retention", "admin", "main h1",
                 _ask_to_release),
        PageSpec("accounts", "/admin/accounts", "admin", "main h1"),
        PageSpec("accounts-revoke", "/admin/accounts", "admin", "main h1", _ask_to_revoke),
        PageSpec("accounts-disable", "/admin/accounts", "admin", "main h1", _ask_to_disable),
        PageSpec("error-404", "/no/such/page", "admin", "main h1"),
        PageSpec("error-401", "/admin/audit", None, "main h1"),
    ]


def _log_in(browser: Any, url: str, username: str) -> dict[str, Any]:
    """The browser state with the session cookie of ``username`` (logged in as the capture
    app does, with JSON)."""
    context = browser.new_context(**PHONE)
    answer = context.request.post(f"{url}/login",
                                  data={"username": username, "password": PASSWORD})
    assert answer.ok, answer.text()
    state = context.storage_state()
    context.close()
    return state


def _errors(page: Any) -> list[str]:
    """The list the page's script errors and console errors (e.g. a CSP violation) go to."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None)
    return errors


def _measured(page: Any, errors: list[str]) -> dict[str, Any]:
    """What the page shows now, as :func:`_problems` checks it (but axe): its width, small tap
    targets, background, app bar, links, times, text and ``errors``."""
    return {
        "width": page.evaluate("document.documentElement.scrollWidth"),
        "small": page.evaluate(TAP_TARGETS),
        "luminance": page.evaluate(BACKGROUND_LUMINANCE),
        "who": page.locator(".appbar #who").text_content() if page.locator(
            ".appbar #who").count() else None,
        "logout": page.locator(".appbar #logout").is_visible(),
        "nav": page.locator(".appnav li:visible").all_text_contents(),
        "back": page.locator(".back").get_attribute("href") if page.locator(".back").count()
        else None,
        "times": page.locator("time[datetime]").all_text_contents(),
        "manual": page.evaluate("""() => [...document.querySelectorAll(
          "#manual-form > :not(h3):not(p)")].map((e) => { const b = e.getBoundingClientRect();
          return [Math.round(b.left), Math.round(b.right)]; })"""),
        "text": page.locator("body").inner_text(),
        "errors": errors,
    }


def _check(browser: Any, site: Site, spec: PageSpec, state: dict[str, Any] | None,
           scheme: str, axe: Path) -> dict[str, Any]:
    """Open the page under its CSP and measure it, screenshot it, then run axe on it in a
    context that bypasses the CSP."""
    context = browser.new_context(**PHONE, color_scheme=scheme, storage_state=state)
    page = context.new_page()
    errors = _errors(page)
    page.goto(f"{site.url}{spec.path}")
    page.wait_for_selector(spec.ready, timeout=30_000)
    if spec.act:
        spec.act(page)
    page.wait_for_timeout(200)
    seen = _measured(page, errors)
    page.screenshot(path=str(ARTIFACTS / f"phone-{spec.name}-{scheme}.png"), full_page=True)
    context.close()

    context = browser.new_context(**PHONE, color_scheme=scheme, storage_state=state,
                                  bypass_csp=True)
    page = context.new_page()
    page.goto(f"{site.url}{spec.path}")
    page.wait_for_selector(spec.ready, timeout=30_000)
    if spec.act:
        spec.act(page)
    page.add_script_tag(path=str(axe))
    seen["axe"] = page.evaluate(AXE_RUN)
    context.close()
    return seen


def _problems(site: Site, specs: list[PageSpec],
              seen: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """What :func:`_check` saw wrong on each of ``specs`` in each scheme: wider than the
    phone, tap targets too small, axe violations, page errors, the background not of the
    scheme, the app bar not naming the page's user (or Log out without a login)."""
    problems = []
    for (name, scheme), page in seen.items():
        spec = next(s for s in specs if s.name == name)
        where = f"{name} ({scheme})"
        if page["width"] > 390:
            problems.append(f"{where}: {page['width']} px wide")
        problems += [f"{where}: {small}" for small in page["small"]]
        problems += [f"{where}: axe {violation}" for violation in page["axe"]]
        problems += [f"{where}: page error {error}" for error in page["errors"]]
        dark = page["luminance"] < 0.05
        if dark != (scheme == "dark"):
            problems.append(f"{where}: background luminance {page['luminance']:.2f}")
        if spec.role:
            if page["who"] != site.users[spec.role] or not page["logout"]:
                problems.append(f"{where}: app bar shows {page['who']!r}, "
                                f"log out {page['logout']}")
        elif page["logout"]:
            problems.append(f"{where}: Log out shown without a login")
    return problems


def test_every_page_fits_a_phone_is_accessible_and_has_the_app_bar(
        site: Site, chromium: Browser, axe_script: Path) -> None:
    specs = pages(site)

    def scenario(browser: Any) -> dict[tuple[str, str], dict[str, Any]]:
        states = {role: _log_in(browser, site.url, user) for role, user in site.users.items()}
        return {(spec.name, scheme): _check(browser, site, spec,
                                            states[spec.role] if spec.role else None, scheme,
                                            axe_script)
                for scheme in SCHEMES for spec in specs}

    seen = chromium.run(scenario)
    assert _problems(site, specs, seen) == []

    light = {name: page for (name, scheme), page in seen.items() if scheme == "light"}
    assert light["capture-home"]["nav"] == ["Capture", "Batch"]
    assert light["batch"]["nav"] == ["Capture", "Batch"]
    assert light["viewer"]["nav"] == ["Capture"]
    assert light["deliveries"]["nav"] == ["Capture", "Batch", "Deliveries", "Audit", "Exports",
                                          "Accounts", "Corrections", "Retention"]
    assert "No archived instance has SOP Instance UID 1.2.3.4." in \
        light["corrections-refused"]["text"]
    retention = re.sub(r"\s+", " ", light["retention"]["text"])
    assert re.search(r"DEMO, ALICE, MRN 00123456 \(HOSP-A\) Study date \d+ \w{3} 20\d\d "
                     r"Department Wound care Body site [^,]+, left Photos 1 \(\d+ files? to "
                     r"delete\) Rule default, due since", retention)
    assert f"Study Instance UID {site.study_uid}" in retention
    assert "Purge 1 study" in retention and "MRN 00999999 (HOSP-A) No study of this patient is " \
        "here, so no name to show. Every study of the patient on hold: pending claim" in retention
    release = re.sub(r"\s+", " ", light["retention-release"]["text"])
    assert "Release this legal hold? Held since" in release and "by ada, for: pending claim" \
        in release and "MRN 00999999 (HOSP-A)" in release
    export = re.sub(r"\s+", " ", light["exports-preview"]["text"])
    assert re.search(r"Export 1 study, de-identified\? \d+ DICOM images? of 1 patient\. Dates: "
                     r"shifted per patient\.", export)
    assert re.search(r"Export \S+ \d+ images? exported, 0 excluded, 0 flagged for review; 1 "
                     r"patient, 1 of 1 study\. Dates: modified\. Download the export \(zip\) "
                     r"Files in the export \(\d+\)",
                     re.sub(r"\s+", " ", light["exports-done"]["text"]))
    assert light["login"]["nav"] == [] and light["capture-login"]["nav"] == []
    assert light["viewer"]["back"] == "/"
    # opened without an EMR launch: no patient, so nothing to list or photograph
    assert "No patient open" in light["launch-patient"]["text"]
    assert "Take photos of this patient" not in light["launch-patient"]["text"]
    # the photo's quality line, its failing check marked (a lab photo: 2.9 px/mm is too far)
    assert re.search(r"Photo 1: Sharp · exposure ok · chart found · tilt \d+° · ✗ failed: "
                     r"2\.9 px/mm", re.sub(r"\s+", " ", light["viewer"]["text"]))
    for name in ("audit", "deliveries", "retention", "accounts"):
        assert light[name]["times"], name
        assert not re.search(r"\d\d:\d\d:\d\d\.\d{3}", light[name]["text"]), name
        assert all(re.search(r"\b20\d\d\b", t) and "T" not in t for t in light[name]["times"])
    accounts = re.sub(r"\s+", " ", light["accounts"]["text"])
    local_time = r"\w{3} \d+, 20\d\d, [\d:]+ [AP]M"  # as local-times.js writes it
    assert re.search(rf"{LOCKED} capture Password Active; locked until {local_time} Unlock "
                     rf"{LOCKED} Disable… {LOCKED}", accounts)
    assert f"{DISABLED} capture Password Disabled Enable {DISABLED}" in accounts
    assert "admin-nurse (you) admin Password Active capture-nurse" in accounts  # no Disable
    assert re.search(rf"\b1 capture-user capture {local_time} never {local_time} Live Revoke "
                     r"token 1…", accounts)
    assert "Revoke token 1? User capture-user Role capture" in \
        re.sub(r"\s+", " ", light["accounts-revoke"]["text"])
    assert "Disable capture-nurse? Role capture" in \
        re.sub(r"\s+", " ", light["accounts-disable"]["text"])
    # the "add a patient by MRN" row: labels, fields and Add stacked, all edges aligned
    assert len(light["batch"]["manual"]) == 5
    assert len({tuple(edges) for edges in light["batch"]["manual"]}) == 1


def test_a_legal_hold_is_released_on_confirm_only_and_cancel_keeps_it(
        app: Flask, site: Site, chromium: Browser) -> None:
    def scenario(browser: Any) -> tuple[list[str], list[str]]:
        context = browser.new_context(**PHONE, storage_state=_log_in(
            browser, site.url, site.users["admin"]))
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{site.url}/admin/retention")
        seen = []
        for answer in ("Cancel", "Release the hold"):
            _ask_to_release(page)
            seen.append(page.locator("main").inner_text())
            page.click(f"#confirm-title ~ form :text-is('{answer}')")
            page.wait_for_selector("#holds-title")
            seen.append(page.locator("main").inner_text())
            seen.append(page.url)
        context.close()
        return seen, dialogs

    seen, dialogs = chromium.run(scenario)
    asked, cancelled, cancel_url, _, released, release_url = seen
    assert dialogs == []  # the page asks, not a native dialog
    asked = re.sub(r"\s+", " ", asked)
    assert "Release this legal hold?" in asked and "for: pending claim" in asked
    assert "Name not recorded MRN 00999999 (HOSP-A)" in asked
    assert "Nothing it covers is left here to purge." in asked
    assert "Legal holds" not in asked  # only the question, nothing else to tap
    assert re.search(r"MRN 00999999 \(HOSP-A\)\s+No study of this patient is here, so no name "
                     r"to show\.\s+Every study of the patient on hold: pending claim", cancelled)
    assert cancel_url == f"{site.url}/admin/retention"
    assert "legal hold is released" in released and "No legal hold." in released
    assert release_url == f"{site.url}/admin/retention/release"  # the ID in the body only
    with services(app).db.session() as db:
        assert db.scalars(select(LegalHold)).all() == []


def test_a_token_is_revoked_on_confirm_only_and_cancel_keeps_it(
        app: Flask, site: Site, chromium: Browser, axe_script: Path) -> None:
    """The lost phone's token, revoked by an admin on a phone: each screen fits it and is
    accessible; the first tap only asks, Cancel changes nothing, Confirm revokes (audited)."""
    with services(app).db.session() as db:
        token = db.scalars(select(ApiToken).where(ApiToken.user == "capture-user")).one().id
    steps = ("asked", "cancelled", "asked-again", "revoked")
    specs = [PageSpec(f"accounts-{step}", "/admin/accounts", "admin", "main h1")
             for step in steps]

    def scenario(browser: Any) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
        context = browser.new_context(**PHONE, color_scheme="light", bypass_csp=True,
                                      storage_state=_log_in(browser, site.url,
                                                            site.users["admin"]))
        page = context.new_page()
        errors, seen, urls = _errors(page), {}, []
        page.goto(f"{site.url}/admin/accounts")
        for step, tap in zip(steps, (f"button:text-is('Revoke token {token}…')",
                                     "#confirm-title ~ form :text-is('Cancel')",
                                     f"button:text-is('Revoke token {token}…')",
                                     f"#confirm-title ~ form :text-is('Revoke token {token}')"),
                             strict=True):
            page.click(tap)
            page.wait_for_selector("main h1")
            seen[(f"accounts-{step}", "light")] = shown = _measured(page, errors)
            shown["revoked"] = _revoked(app, token)
            page.screenshot(path=str(ARTIFACTS / f"phone-accounts-{step}.png"), full_page=True)
            page.add_script_tag(path=str(axe_script))
            shown["axe"] = page.evaluate(AXE_RUN)
            urls.append(page.url)
        context.close()
        return seen, urls

    seen, urls = chromium.run(scenario)
    assert _problems(site, specs, seen) == []
    text = {step: re.sub(r"\s+", " ", seen[(f"accounts-{step}", "light")]["text"])
            for step in steps}
    revoked = {step: seen[(f"accounts-{step}", "light")]["revoked"] for step in steps}
    assert revoked == {"asked": False, "cancelled": False, "asked-again": False,
                       "revoked": True}
    assert f"Revoke token {token}? User capture-user Role capture" in text["asked"]
    assert "cannot be undone" in text["asked"] and "API tokens of" not in text["asked"]
    assert urls[1] == f"{site.url}/admin/accounts"  # Cancel: the list again
    assert f"Revoke token {token}…" in text["cancelled"]
    assert f"Token {token} is revoked: it is refused from its next request on." \
        in text["revoked"]
    assert re.search(rf"\b{token} capture-user capture [^.]+ Revoked \w{{3}} \d+, 20\d\d",
                     text["revoked"])
    assert f"Revoke token {token}…" not in text["revoked"]
    with services(app).db.session() as db:
        records = [(e.actor, e.role, tuple(e.entities)) for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action == "token.revoke"))]
    assert records == [(site.users["admin"], "admin", (f"token:{token}",))]


def _revoked(app: Flask, token_id: int) -> bool:
    """Whether the token numbered ``token_id`` is revoked in the database."""
    with services(app).db.session() as db:
        row = db.get(ApiToken, token_id)
        return row is not None and row.revoked_at is not None


def test_the_retention_lists_name_each_patient_and_fit_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], site: Site,
        chromium: Browser, axe_script: Path) -> None:
    undated = upload_study(client, auth["capture"], [photo(CHART)], site=HEEL,
                           patient={"id": "00444444", "issuer": "HOSP-A", "name": "DEMO^DAN"})
    with services(app).db.session() as db:
        db.add(LegalHold(study_uid=site.study_uid, reason="court order 7", set_by="ada"))
    spec = PageSpec("retention-lists", "/admin/retention", "admin", "main h1")

    def scenario(browser: Any) -> dict[tuple[str, str], dict[str, Any]]:
        state = _log_in(browser, site.url, site.users["admin"])
        return {(spec.name, scheme): _check(browser, site, spec, state, scheme, axe_script)
                for scheme in SCHEMES}

    seen = chromium.run(scenario)
    assert _problems(site, [spec], seen) == []
    text = re.sub(r"\s+", " ", seen[(spec.name, "light")]["text"])
    alice = r"DEMO, ALICE, MRN 00123456 \(HOSP-A\) Study date \d+ \w{3} 20\d\d Department " \
        r"Wound care Body site [^,]+, left Photos 1 "
    uid = re.escape(f"Study Instance UID {site.study_uid}")
    assert re.search(rf"Due but on legal hold {alice}Rule default, due since [\d-]+; on legal "
                     rf"hold \(the study\) {uid} Undetermined \(birth date unknown\) DEMO, DAN, "
                     r"MRN 00444444 \(HOSP-A\) Study date \d+ \w{3} 20\d\d Department Wound "
                     r"care Body site Skin of heel, left Photos 1 Rule heel Study Instance UID "
                     rf"{re.escape(undated.study_uid)} Legal holds", text)
    assert "MRN 00999999 (HOSP-A) No study of this patient is here, so no name to show. Every " \
        "study of the patient on hold: pending claim" in text
    assert re.search(rf"{alice}Study on hold: court order 7 — ada, [^.]+ {uid} Release", text)


def test_log_out_from_the_app_bar_of_a_server_page(site: Site, chromium: Browser) -> None:
    def scenario(browser: Any) -> tuple[str, int]:
        context = browser.new_context(**PHONE, storage_state=_log_in(
            browser, site.url, site.users["admin"]))
        page = context.new_page()
        page.goto(f"{site.url}/admin/audit")
        page.click(".appbar #logout")
        page.wait_for_url(f"{site.url}/login")
        me = context.request.get(f"{site.url}/api/v1/me").status
        header = page.locator(".appbar").inner_text()
        context.close()
        return header, me

    header, me = chromium.run(scenario)
    assert me == 401  # the session ended on the server
    assert header.strip() == "Wound photos"  # nobody, no links


def test_the_cached_capture_page_names_nobody_and_the_others_log_out_by_form(
        client: FlaskClient, users: dict[str, str]) -> None:
    token = log_in(client, users["capture"])
    shell = client.get("/").get_data(as_text=True)
    assert users["capture"] not in shell and token not in shell  # cached for everyone
    assert 'data-roles="capture"' in shell  # the links, for shell.js to show by role
    batch = client.get("/batch")
    assert batch.headers["Cache-Control"] == "no-store"
    html = batch.get_data(as_text=True)
    assert f'<span id="who">{users["capture"]}</span>' in html
    assert f'name="csrf_token" value="{token}"' in html
    assert 'href="/admin/audit"' not in html  # an admin's link, not a capture user's
    # a form post from our no-referrer pages: Chromium sends Origin: null, same-origin
    posted = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/logout", data={"csrf_token": token}, headers={
        **posted, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/logout", data={"csrf_token": token},
                       headers={"Origin": "null"}).status_code == 403
    out = client.post("/logout", data={"csrf_token": token}, headers=posted)
    assert (out.status_code, out.headers["Location"]) == (303, "/login")
    assert client.get("/api/v1/me").status_code == 401
