"""Logging out of the capture app on a phone two nurses share (one browser profile, 390×844):
it deletes only the photos of the user who logs out; the other user's photos stay encrypted
and reach the archive at that user's next login. The logout dialog is audited (axe-core,
44 px tap targets), so this context bypasses the CSP to inject axe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete

from app.db.models import WebSession
from app.workflow.accounts import create_user
from tests.conftest import services
from tests.e2e.conftest import PASSWORD, USER, LiveApp, PhoneAudit
from tests.e2e.test_capture_app import fill_details, idb, identify_typed, log_in, screen, shoot
from tests.e2e.test_offline_start import IDB_RECORDS

OTHER = "nurse.night"

PHOTO_OWNERS = """async () => {
  const db = await new Promise((ok, fail) => {
    const r = indexedDB.open("ebiw-capture");
    r.onsuccess = () => ok(r.result); r.onerror = fail; });
  const all = await new Promise((ok) => {
    const r = db.transaction("photos").objectStore("photos").getAll();
    r.onsuccess = () => ok(r.result); });
  db.close();
  return all.map((p) => p.user);
}"""


def queue_offline(page: Any, mrn: str, site: tuple[str, str, str | None]) -> None:
    """Identify ``mrn`` online, take one photo of ``site`` and send it offline: it waits on
    the phone. Back to the home screen, still offline."""
    page.click("#start")
    identify_typed(page, mrn)
    page.click("[data-confirm='0']")
    fill_details(page, *site)
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    page.context.set_offline(True)
    page.click("#send")
    page.wait_for_selector("#review-list .state >> text=Waiting to be sent")
    page.click("#finish")
    screen(page, "home")


def test_logout_keeps_the_other_users_photos_for_their_next_login(
        live: LiveApp, phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    create_user(services(live.flask).db, OTHER, PASSWORD, "capture")
    audit = phone_audit("chart", "light", "logout-shared")
    page = audit.page
    page.goto("/")
    log_in(page)
    queue_offline(page, "00123456", ("forearm", "Forearm", "L"))
    with services(live.flask).db.session() as db:  # the first nurse's login ends meanwhile
        db.execute(delete(WebSession))
    page.context.set_offline(False)
    screen(page, "login")  # the photo waits for that nurse

    page.fill("#username", OTHER)
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    screen(page, "home")
    assert page.inner_text("#others-waiting") \
        == "1 photo of another user waits here for that user to log in."
    queue_offline(page, "00234567", ("sacr", "Sacrum", None))
    page.click("#start-emergency")  # and one photo held for a patient not identified yet
    shoot(page, 1)
    page.click("#logout")
    page.wait_for_selector("#logout-dialog[open]")
    assert page.inner_text("#logout-warning") == (
        "2 photos you took on this device have not been sent. Logging out deletes them for "
        "good. Other users' photos stay here for them.")
    audit.check("logout-dialog")
    page.click("#logout-dialog button[value=logout]")
    screen(page, "login")
    assert idb(page)["ebiw-capture"] == {"blobs": 1, "keys": 1, "photos": 1, "sessions": 1,
                                         "patients": 1, "drafts": 0, "meta": 1}  # body sites
    assert page.evaluate(PHOTO_OWNERS) == [USER]
    for store, texts in page.evaluate(IDB_RECORDS).items():  # still encrypted
        for text in texts:
            for secret in ("00123456", "DEMO", "ALICE", "00234567", "BOB"):
                assert secret not in text, (store, secret)

    page.context.set_offline(False)
    log_in(page)  # the first nurse again: the photo goes
    page.wait_for_function("() => document.querySelector('#queue').hidden", timeout=60000)
    assert idb(page)["ebiw-capture"]["photos"] == 0
    [session] = live.sessions()
    assert (session.patient_id, session.created_by, session.status) \
        == ("00123456", USER, "complete")
    assert live.counts() == (1, 2, 2)  # the chart photo + its colour-normalized instance
    audit.assert_clean("logout-dialog")
