"""The capture PWA in a real browser: install, the whole flow into the archive, bad network,
capture now / identify later, logout purge, and the time from shutter to acknowledged upload."""

from __future__ import annotations

import json
from typing import Any

from PIL import Image
from sqlalchemy import select

from app.db.models import Photo, WebSession
from app.web.pwa import shell
from tests.conftest import services
from tests.e2e.conftest import ARTIFACTS, PASSWORD, PHOTO_SIZE, USER, WRISTBAND_MRN, LiveApp

SIZES = ((390, 844), (1280, 800))

IDB_COUNTS = """async () => {
  const out = {};
  for (const { name } of await indexedDB.databases()) {
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open(name); r.onsuccess = () => ok(r.result); r.onerror = fail; });
    out[name] = {};
    for (const store of db.objectStoreNames) {
      out[name][store] = await new Promise((ok) => {
        const r = db.transaction(store).objectStore(store).count();
        r.onsuccess = () => ok(r.result); });
    }
    db.close();
  }
  return out;
}"""

STORED_BLOBS = """async () => {
  const db = await new Promise((ok, fail) => {
    const r = indexedDB.open("ebiw-capture");
    r.onsuccess = () => ok(r.result); r.onerror = fail; });
  const all = await new Promise((ok) => {
    const r = db.transaction("blobs").objectStore("blobs").getAll();
    r.onsuccess = () => ok(r.result); });
  db.close();
  return all.map((b) => ({ head: Array.from(new Uint8Array(b.data).slice(0, 3)),
                           size: b.data.byteLength, iv: b.iv.length }));
}"""


def screen(page: Any, name: str) -> None:
    page.wait_for_selector(f"#screen-{name}:not([hidden])")


def snap(page: Any, name: str) -> None:
    """Screenshots of the current screen at phone and desktop sizes."""
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        page.screenshot(path=str(ARTIFACTS / f"{width}x{height}-{name}.png"), full_page=True)
    page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})


def log_in(page: Any) -> None:
    screen(page, "login")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    screen(page, "home")


def identify_typed(page: Any, mrn: str) -> None:
    screen(page, "identify")
    page.fill("#mrn", mrn)
    page.click("#mrn-form button[type=submit]")
    screen(page, "patient")


def fill_details(page: Any, search: str, meaning: str, side: str | None,
                 consent: str = "given") -> None:
    screen(page, "details")
    page.fill("#site-search", search)
    page.get_by_label(meaning, exact=True).check()
    if side:
        page.locator(f"input[name=laterality][value={side}]").check()
    page.locator(f"input[name=consent][value={consent}]").check()


def shoot(page: Any, photos: int) -> None:
    screen(page, "camera")
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")
    for n in range(photos):
        before = page.locator("#shots canvas").count()
        page.click("#shutter")
        page.wait_for_function("(n) => document.querySelectorAll('#shots canvas').length > n",
                               arg=before)
        page.wait_for_selector("#shutter:not([disabled])")  # the shot's status line is said
        assert page.locator("#shots canvas").count() == before + 1, n


def send_and_wait(page: Any) -> None:
    page.click("#send")
    page.wait_for_selector("#finish:not([hidden])")
    page.wait_for_function("() => document.querySelector('#finish').textContent === 'Finish'",
                           timeout=60000)


SMALL_TARGETS = """() => [...document.querySelectorAll(
    "button, a.button, label.button, .option, .segmented label, .check, input:not([type=radio])"
    + ":not([type=checkbox]):not([type=file])")]
  .filter((e) => e.offsetParent !== null && e.getBoundingClientRect().height < 48)
  .map((e) => e.id || e.textContent.trim())"""


def check_screen(page: Any) -> None:
    """Touch targets of at least 48 px, and no way to save a photo (no links, no <img>)."""
    assert page.evaluate(SMALL_TARGETS) == []
    assert page.locator("a[download], img").count() == 0


def idb(page: Any) -> dict[str, dict[str, int]]:
    return page.evaluate(IDB_COUNTS)


def test_the_app_is_installable_and_caches_only_its_shell(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    manifest = page.request.get("/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    fields = manifest.json()
    assert (fields["display"], fields["start_url"], fields["scope"]) == ("standalone", "/", "/")
    purposes = {icon["purpose"] for icon in fields["icons"]}
    assert {"any", "maskable"} <= purposes
    for icon in fields["icons"]:
        response = page.request.get(icon["src"])
        assert response.ok and response.headers["content-type"] == "image/png"
        width, height = map(int, icon["sizes"].split("x"))
        png = ARTIFACTS / "icon.png"
        png.write_bytes(response.body())
        assert Image.open(png).size == (width, height)
    assert page.evaluate("document.querySelector('link[rel=manifest]').href") \
        == f"{live.url}/manifest.webmanifest"
    script = page.evaluate("navigator.serviceWorker.ready.then((r) => r.active.scriptURL)")
    assert script == f"{live.url}/sw.js"
    log_in(page)  # API calls go past the worker: none may end up in a cache
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    cached = page.evaluate("""async () => {
      const out = {};
      for (const name of await caches.keys()) {
        out[name] = (await (await caches.open(name)).keys()).map((r) => new URL(r.url).pathname);
      }
      return out;
    }""")
    with live.flask.app_context():
        version, urls = shell()
    assert list(cached) == [f"ebiw-shell-{version}"]
    assert sorted(cached[f"ebiw-shell-{version}"]) == sorted(urls)
    assert not any(u.startswith(("/api/", "/login", "/logout")) for u in urls)
    assert page.errors == []


def test_typed_mrn_flow_ends_with_the_photos_in_the_archive(live: LiveApp,
                                                           page_for: Any) -> None:
    page = page_for("chart", live)
    snap(page, "1-login")
    log_in(page)
    snap(page, "2-home")
    check_screen(page)
    page.click("#start")
    screen(page, "identify")
    page.wait_for_function("() => document.querySelector('#scan-video').videoWidth > 0")
    snap(page, "3-identify")
    check_screen(page)
    identify_typed(page, "00123456")
    assert "DEMO, Alice" in page.inner_text("#patient-list")
    snap(page, "4-patient")
    check_screen(page)
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "L")
    page.fill("#view", "close-up")
    snap(page, "5-details")
    check_screen(page)
    page.click("#details-form button[type=submit]")
    shoot(page, 3)
    page.click("#retake")
    page.wait_for_function("() => document.querySelectorAll('#shots canvas').length === 2")
    shoot(page, 1)
    snap(page, "6-camera")
    check_screen(page)
    page.click("#camera-done")
    screen(page, "review")
    assert page.locator("#review-list li").count() == 3
    snap(page, "7-review")
    check_screen(page)
    send_and_wait(page)
    assert page.locator("#review-list .state", has_text="Stored").count() == 3
    assert page.locator("#review-list .colour").count() == 3
    snap(page, "8-sent")
    check_screen(page)
    page.click("#finish")
    screen(page, "done")
    snap(page, "9-done")
    check_screen(page)

    assert live.counts() == (3, 6, 6)  # each chart photo + its colour-normalized instance
    [session] = live.sessions()
    assert (session.patient_id, session.encounter, session.body_site, session.laterality) \
        == ("00123456", "ENC1001", "14975008", "L")
    assert (session.consent, session.sensitive, session.source, session.department,
            session.description, session.status, session.created_by) \
        == ("given", False, "provider", "Wound care", "close-up", "complete", USER)
    href = page.get_attribute("#study-link", "href")
    assert href == f"/studies/{session.study_uid}"
    assert idb(page)["ebiw-capture"]["photos"] == 0  # acknowledged photos leave the device
    assert not [url for url in page.urls if "00123456" in url or "DEMO" in url]
    assert page.errors == []


def test_wristband_scan_identifies_the_patient(live: LiveApp, page_for: Any) -> None:
    page = page_for("wristband", live)
    log_in(page)
    page.click("#start")
    screen(page, "identify")
    page.wait_for_function("() => document.querySelector('#scan-video').videoWidth > 0")
    page.click("#scan")
    screen(page, "patient")
    assert "BAND, Erin" in page.inner_text("#patient-list")
    assert WRISTBAND_MRN in page.inner_text("#patient-read")
    page.click("[data-confirm='0']")
    fill_details(page, "heel", "Skin of heel", "R", consent="not-required")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-done")

    def with_colour(route: Any) -> None:  # the colour step's answer, as the API documents it
        response = route.fetch()
        body = response.json()
        body["color"] = {"chart": {"type": "ColorChecker Classic"}, "reliable": True,
                         "delta_e_after": {"mean": 1.84, "max": 4.31, "loo_mean": 2.2}}
        route.fulfill(response=response, json=body)

    page.route("**/api/v1/sessions/*/photos/*", with_colour)
    send_and_wait(page)
    assert page.inner_text("#review-list .colour") == \
        "Colour chart found: ΔE00 after correction mean 1.8, max 4.3."
    assert live.counts() == (1, 1, 1)
    [session] = live.sessions()
    assert (session.patient_id, session.encounter, session.consent) \
        == (WRISTBAND_MRN, "ENC2001", "not-required")
    assert page.errors == []


def test_offline_mid_upload_loses_nothing_and_duplicates_nothing(live: LiveApp,
                                                                page_for: Any) -> None:
    page = page_for("chart", live)
    log_in(page)
    page.evaluate("navigator.serviceWorker.ready")
    page.click("#start")
    identify_typed(page, "00234567")
    page.click("[data-confirm='0']")
    fill_details(page, "sacr", "Sacrum", None)
    page.click("#details-form button[type=submit]")
    shoot(page, 3)
    page.click("#camera-done")
    live.hold.seconds = 1.5  # each upload is held on the server: we cut the link meanwhile
    page.click("#send")
    page.wait_for_function("() => document.querySelectorAll('#review-list .state')[0]"
                           ".textContent === 'Stored'", timeout=30000)
    page.context.set_offline(True)
    page.wait_for_timeout(2500)  # the upload in flight finishes on the server, unseen
    assert not page.is_hidden("#queue")
    page.reload()  # reopen the app offline: the worker serves the shell
    screen(page, "home")  # on the last-known login
    page.wait_for_selector("#queue:not([hidden])")
    waiting = idb(page)["ebiw-capture"]["photos"]
    assert waiting >= 1
    assert "waiting to be sent" in page.inner_text("#queue")
    assert live.counts()[0] + waiting >= 3
    live.hold.seconds = 0
    page.context.set_offline(False)
    screen(page, "home")  # the cookie session is still valid: the app resumes by itself
    page.wait_for_function("() => document.querySelector('#queue').hidden", timeout=60000)
    assert idb(page)["ebiw-capture"] == {"blobs": 0, "keys": 1, "photos": 0, "sessions": 0,
                                         "patients": 1, "drafts": 0, "meta": 2}  # login, body sites
    assert live.counts() == (3, 6, 6)  # each chart photo + its colour-normalized instance
    [session] = live.sessions()
    assert session.status == "complete" and session.photo_count >= 3
    assert page.errors == []


def test_capture_now_identify_later_then_logout_purges_the_device(live: LiveApp,
                                                                  page_for: Any) -> None:
    page = page_for("chart", live)
    log_in(page)
    page.click("#start-emergency")
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    assert page.inner_text("#send") == "Identify the patient to send"
    blobs = page.evaluate(STORED_BLOBS)
    assert len(blobs) == 2
    for blob in blobs:  # AES-GCM: no JPEG marker, 12-byte IV, 16-byte tag
        assert blob["head"] != [0xFF, 0xD8, 0xFF] and blob["iv"] == 12
    page.reload()  # held photos survive a restart, and are never sent unidentified
    screen(page, "home")
    assert "patient not identified" in page.inner_text("#device-list")
    snap(page, "home-held")
    assert live.counts() == (0, 0, 0)
    page.click("[data-resume]")
    identify_typed(page, "00345678")
    page.click("[data-confirm='0']")
    fill_details(page, "buttock", "Skin of buttock", "B")
    assert page.is_checked("#sensitive") and page.is_disabled("#sensitive")
    page.click("#details-form button[type=submit]")
    screen(page, "review")
    send_and_wait(page)
    assert live.counts() == (2, 4, 4)  # each chart photo + its colour-normalized instance
    [session] = live.sessions()
    assert (session.patient_id, session.sensitive, session.laterality) == ("00345678", True, "B")

    page.click("#finish")
    page.click("#new-capture")
    page.click("[data-action=cancel] >> visible=true")
    page.click("#start-emergency")
    shoot(page, 1)
    page.click("#logout")
    page.wait_for_selector("#logout-dialog[open]")
    assert "1 photo" in page.inner_text("#logout-warning")
    page.click("#logout-dialog button[value=logout]")
    screen(page, "login")
    assert idb(page)["ebiw-capture"] == {"blobs": 0, "keys": 0, "photos": 0, "sessions": 0,
                                         "patients": 0, "drafts": 0, "meta": 0}
    with services(live.flask).db.session() as db:
        assert db.scalars(select(WebSession)).all() == []
    assert page.request.get("/api/v1/me").status == 401
    assert live.counts() == (2, 4, 4)  # each chart photo + its colour-normalized instance
    assert page.errors == []


def test_shutter_to_acknowledged_upload_of_a_12_mp_photo(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    log_in(page)
    page.click("#start")
    identify_typed(page, "00123456")
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "R")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-done")
    send_and_wait(page)
    timing = page.evaluate("""() => {
      const at = (prefix) => performance.getEntriesByType("mark")
        .find((m) => m.name.startsWith(prefix)).startTime;
      const put = performance.getEntriesByType("resource")
        .find((r) => r.initiatorType === "xmlhttprequest" && r.name.includes("/photos/"));
      return { shutter_to_ack_ms: at("ebiw:stored:") - at("ebiw:shutter:"),
               shutter_to_kept_ms: at("ebiw:kept:") - at("ebiw:shutter:"),
               put_ms: put.duration };
    }""")
    with services(live.flask).db.session() as db:
        photo = db.scalars(select(Photo)).one()
    timing.update(width=photo.width, height=photo.height, bytes=photo.size)
    (ARTIFACTS / "shutter-to-ack.json").write_text(json.dumps(timing, indent=1))
    print(f"\nshutter → acknowledged upload, 12 MP on loopback: {timing}")
    assert (photo.width, photo.height) == PHOTO_SIZE
    assert timing["shutter_to_ack_ms"] < 15000
