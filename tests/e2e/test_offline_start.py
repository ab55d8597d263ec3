"""Starting the installed capture app without a network, at phone size: the cached shell opens
on the last-known login, patients confirmed before are identified offline (or later), photos
wait encrypted on the phone and reach the archive once the network is back — after a new login
when the server ended the old one meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from sqlalchemy import delete, select

from app.db.models import SessionIdentification, WebSession
from app.web.pwa import shell
from tests.conftest import PHONE, services
from tests.e2e.conftest import LiveApp
from tests.e2e.test_capture_app import fill_details, idb, identify_typed, log_in, screen, shoot

MRN = "00123456"  # DEMO, Alice (seeded), open encounter ENC1001

OFFLINE_NOTE = "Offline — photos will be sent when you are back online."

IDB_RECORDS = """async () => {
  // every record of the app's database, byte buffers as Latin-1 text: plaintext would show
  const text = (value) => {
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      const bytes = new Uint8Array(value.buffer || value);
      let out = "";
      for (const b of bytes) out += String.fromCharCode(b);
      return out;
    }
    if (value && typeof value === "object") {
      return Object.entries(value).map(([k, v]) => `${k}=${text(v)}`).join(";");
    }
    return String(value);
  };
  const db = await new Promise((ok, fail) => {
    const r = indexedDB.open("ebiw-capture");
    r.onsuccess = () => ok(r.result); r.onerror = fail; });
  const out = {};
  for (const name of db.objectStoreNames) {
    if (name === "keys") continue;  // a CryptoKey: nothing to read
    out[name] = await new Promise((ok) => {
      const r = db.transaction(name).objectStore(name).getAll();
      r.onsuccess = () => ok(r.result.map(text)); });
  }
  db.close();
  return out;
}"""


@pytest.fixture
def phone(browsers: Callable[[str], Any], live: LiveApp) -> Iterator[Any]:
    """The app on a Pixel 7 (390×844) whose camera shows the colour chart, errors recorded."""
    context = browsers("chart").new_context(**PHONE, base_url=live.url)
    context.set_default_timeout(20000)
    page = context.new_page()
    page.errors = []
    page.urls = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: page.errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.on("request", lambda request: page.urls.append(request.url))
    page.failed = []  # URLs that got no answer (offline: only API calls may)
    page.on("requestfailed", lambda request: page.failed.append(request.url))
    page.goto("/")
    yield page
    context.close()


def confirm_once_online(page: Any) -> None:
    """Log in and confirm DEMO, Alice once (then cancel): the phone now knows her."""
    log_in(page)
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    page.click("#start")
    identify_typed(page, MRN)
    page.click("[data-confirm='0']")
    screen(page, "details")
    page.fill("#site-search", "forearm")
    page.wait_for_selector("#site-list .option")  # the body-site table was fetched
    page.click("#screen-details [data-action=discard]")
    screen(page, "home")
    assert page.is_hidden("#offline-note")


def reload_offline(page: Any) -> None:
    """Cut the network and reopen the app: the home screen in its offline state."""
    page.context.set_offline(True)
    page.failed.clear()
    page.reload()
    screen(page, "home")
    assert any(url.endswith("/api/v1/me") for url in page.failed)  # the server was out of reach
    assert [url for url in page.failed if "/api/" not in url] == []  # the shell is complete
    assert page.is_hidden("#screen-login")
    assert page.inner_text("#offline-note") == OFFLINE_NOTE


def details_and_photo(page: Any) -> None:
    """Body site (from the table kept on the phone), consent, one photo, review."""
    fill_details(page, "forearm", "Forearm", "L")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")


def send_offline(page: Any, live: LiveApp) -> None:
    """Send: the photo stays queued on the phone, nothing reaches the server."""
    page.click("#send")
    page.wait_for_selector("#review-list .state >> text=Waiting to be sent")
    page.wait_for_timeout(1500)
    assert live.counts() == (0, 0, 0) and live.sessions() == []
    stored = idb(page)["ebiw-capture"]
    assert (stored["photos"], stored["blobs"], stored["sessions"]) == (1, 1, 1)
    page.click("#finish")  # "Continue in the background"
    screen(page, "home")
    assert "waiting to be sent" in page.inner_text("#queue")


def arrived(page: Any, live: LiveApp) -> str:
    """Wait until the queue is empty; check the archive holds the photo of DEMO, Alice; the
    identification method the session recorded."""
    page.wait_for_function("() => document.querySelector('#queue').hidden", timeout=60000)
    assert idb(page)["ebiw-capture"]["photos"] == 0
    assert live.counts() == (1, 2, 2)  # the chart photo + its colour-normalized instance
    [session] = live.sessions()
    assert (session.patient_id, session.encounter, session.body_site, session.status) \
        == (MRN, "ENC1001", "14975008", "complete")
    svc = services(live.flask)
    files = sorted(svc.settings.archive_root.rglob("*.dcm"))
    assert len(files) == 2
    for path in files:
        dataset = pydicom.dcmread(path)
        assert (dataset.PatientID, str(dataset.PatientName), dataset.StudyInstanceUID) \
            == (MRN, "DEMO^ALICE", session.study_uid)
    with svc.db.session() as db:
        row = db.get(SessionIdentification, session.id)
        assert row is not None
        return row.method


def test_offline_start_identifies_from_the_list_and_sends_when_back_online(
        live: LiveApp, phone: Any) -> None:
    page = phone
    confirm_once_online(page)
    reload_offline(page)
    page.click("#start")
    screen(page, "identify")
    page.click("#recent-patients")
    screen(page, "patient")
    assert "DEMO, Alice" in page.inner_text("#patient-list")
    assert "Offline" in page.inner_text("#patient-warning")
    page.click("[data-confirm='0']")
    details_and_photo(page)
    send_offline(page, live)

    page.context.set_offline(False)  # the `online` event: same login, the photo goes
    assert arrived(page, live) == "manual"
    assert page.is_hidden("#offline-note") and page.is_visible("#screen-home")
    cached = page.evaluate("""async () => (await Promise.all((await caches.keys()).map(
      async (name) => (await (await caches.open(name)).keys()).map((r) => r.url)))).flat()""")
    with live.flask.app_context():
        assert sorted(cached) == sorted(f"{live.url}{url}" for url in shell()[1])  # no patient data
    assert not [url for url in page.urls if MRN in url or "DEMO" in url]
    assert page.errors == []


def test_offline_start_capture_now_identify_later(live: LiveApp, phone: Any) -> None:
    page = phone
    confirm_once_online(page)
    reload_offline(page)
    page.click("#start-emergency")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    assert page.inner_text("#send") == "Identify the patient to send"
    page.click("#send")  # identify now, still offline: the typed MRN matches the kept patient
    identify_typed(page, MRN)
    assert "DEMO, Alice" in page.inner_text("#patient-list")
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "L")
    page.click("#details-form button[type=submit]")
    screen(page, "review")
    send_offline(page, live)

    page.context.set_offline(False)
    assert arrived(page, live) == "typed"
    assert page.errors == []


def test_login_ended_while_offline_keeps_the_photo_for_the_next_login(live: LiveApp,
                                                                      phone: Any) -> None:
    page = phone
    confirm_once_online(page)
    reload_offline(page)
    page.click("#start")
    identify_typed(page, MRN)
    page.click("[data-confirm='0']")
    details_and_photo(page)
    send_offline(page, live)
    with services(live.flask).db.session() as db:  # the server ends the login meanwhile
        db.execute(delete(WebSession))

    page.context.set_offline(False)
    screen(page, "login")
    assert "login has ended" in page.inner_text("#login-error")
    page.wait_for_timeout(1000)
    assert live.counts() == (0, 0, 0) and live.sessions() == []
    stored = idb(page)["ebiw-capture"]
    assert (stored["photos"], stored["blobs"], stored["sessions"]) == (1, 1, 1)
    records = page.evaluate(IDB_RECORDS)
    assert len(records["patients"]) == 1  # the patients kept for offline use: encrypted too
    for store, texts in records.items():
        for text in texts:
            for secret in (MRN, "DEMO", "ALICE", "1950-03-14"):
                assert secret not in text, (store, secret)

    log_in(page)
    assert arrived(page, live) == "typed"
    with services(live.flask).db.session() as db:
        assert len(db.scalars(select(WebSession)).all()) == 1
    assert page.errors == []
