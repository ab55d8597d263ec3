"""The batch page on a phone (a Pixel 7, 390×844) in Debian's Chromium, as a clinic assistant
uses it: a confirmed group says what was stored for whom and fits the screen, and its Confirm
cannot be tapped twice; a file the server or a proxy refuses says why in words with its name
readable, "New batch" asks before it leaves photos that are not stored yet (and discards them
on the server only when told to), what goes wrong in the review is said (and focused) where
the user is, "Add a patient by MRN" says what it found, and focus stays on a control, not the
page, when the lists are drawn again."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.db.models import Batch, BatchItem, BatchStatus, CaptureSession, Instance
from tests.batch.conftest import ISSUER, PATIENTS, UNKNOWN_MRN, Shot, label, lesion
from tests.batch.test_batch_clips import PATIENT_A
from tests.batch.test_batch_page import live, open_with, page
from tests.conftest import ARTIFACTS, AXE_RUN, PHONE, TAP_TARGETS, HoldPuts, services

__all__ = ["live", "page"]  # the fixtures, for pytest


@pytest.fixture
def screen() -> dict[str, Any]:
    """The page at phone size; axe-core is injected inline, so the page's CSP is bypassed here
    (test_batch_page drives the page under it)."""
    return {**PHONE, "bypass_csp": True}


def visit() -> list[Shot]:
    """Patient A's label and one of their lesions."""
    return [label("zx_code128-2_05.png", 1, PATIENT_A), lesion(2, 2, PATIENT_A)]


def test_a_confirmed_group_says_what_was_stored_for_whom_and_fits_the_phone(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """The result of a confirmation is in the clinic's words: how many photos were stored for
    which patient (name and MRN), and a link to the study in the viewer whose URL holds
    nothing of the patient."""
    open_with(page, tmp_path / "photos", visit())
    page.click(".batch-group:not(.unsorted) button.confirm:not([disabled])")
    page.wait_for_selector(".batch-group.confirmed")
    with services(live[0]).db.session() as db:
        [study] = db.scalars(select(CaptureSession.study_uid)).all()
    group = page.locator(".batch-group.confirmed")
    assert group.locator(".batch-result").inner_text() == (
        f"Stored 2 photos for BATCH, Anna · MRN {PATIENT_A}.")
    link = group.get_by_role("link", name="Open in viewer")
    assert link.get_attribute("href") == f"/studies/{study}"
    assert "2.25." not in group.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") == 390
    assert page.evaluate(TAP_TARGETS) == []


FILE_ROWS = """() => [...document.querySelectorAll('#file-list li')].map((li) => {
  const name = li.querySelector('.batch-name').getBoundingClientRect();
  const retry = li.querySelector('button.retry');
  const box = retry && retry.getBoundingClientRect();
  return {name: li.querySelector('.batch-name').textContent,
          state: li.querySelector('.batch-state').textContent,
          nameWidth: name.width, nameHeight: name.height,
          lineHeight: parseFloat(getComputedStyle(li).lineHeight),
          retry: box && [box.width, box.height]}; })"""
"""The upload list's rows: each file's name, what its row says, the name's box, and the
size of its Retry button (null: none)."""


def readable(rows: list[dict[str, Any]]) -> None:
    """Each file's name keeps its line (beside Retry, when there is one), Retry is a tap
    target, and the list does not widen the page."""
    for row in rows:
        assert row["nameHeight"] < 2 * row["lineHeight"], row  # one line, not a letter a line
        assert row["nameWidth"] > 150, row
        assert row["retry"] is None or min(row["retry"]) >= 44, row


def test_a_refused_file_says_why_in_words_with_its_name_readable(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """The app refuses a file that is no image (its JSON message); a proxy in front of it
    refuses a large one with an HTML page of its own (413): the row says so in words, not
    "the server answered 413", and the file's name keeps its line. Neither is offered Retry:
    the same file would be refused again."""
    big = lesion(3, 3, PATIENT_A)
    page.route("**/items/*?order=1", lambda route: route.fulfill(
        status=413, content_type="text/html",
        body="<html><body><h1>413 Request Entity Too Large</h1></body></html>"))
    broken = Shot("camera-roll-broken.jpg", b"not a JPEG at all" * 20, None, None, "clinical")
    open_with(page, tmp_path / "photos", [broken, big])
    page.wait_for_function("() => document.querySelectorAll("
                           "'#file-list li[data-state=failed]').length === 2")
    rows = page.evaluate(FILE_ROWS)
    assert [(r["name"], r["state"], r["retry"]) for r in rows] == [
        ("camera-roll-broken.jpg",
         "not a supported image (expected JPEG, PNG, HEIC, TIFF or WebP)", None),
        ("lesion-03.jpg", "the file is too large for the server (error 413)", None)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-batch-refused.png"), full_page=True)
    readable(rows)
    assert page.evaluate("document.documentElement.scrollWidth") == 390


def test_retry_is_offered_only_when_sending_again_can_help(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """A file the server refuses for what it is (not an image) says why, is sent once and is
    not offered Retry; a file a failing gateway answers 503 for is tried again by itself, then
    offered Retry, which sends it."""
    lesion_shot = lesion(2, 2, PATIENT_A)
    page.route("**/items/*?order=1", lambda route: route.fulfill(
        status=503, content_type="text/html", body="<html><body>Bad gateway</body></html>"))
    broken = Shot("a-scanned-letter.jpg", b"%PDF-1.4 a letter, not a photo" * 20, None, None,
                  "clinical")  # first in file order (by name): sent as order 0
    open_with(page, tmp_path / "photos", [broken, lesion_shot])
    page.wait_for_function("""() => [...document.querySelectorAll(
      '#file-list li[data-state=failed] .batch-state')].filter((s) =>
      !s.textContent.endsWith('trying again')).length === 2""", timeout=60000)
    rows = page.evaluate(FILE_ROWS)
    assert [(r["name"], r["state"], r["retry"] is not None) for r in rows] == [
        ("a-scanned-letter.jpg",
         "not a supported image (expected JPEG, PNG, HEIC, TIFF or WebP)", False),
        ("lesion-02.jpg", "the server could not be reached or had a problem (error 503)",
         True)]
    readable(rows)
    assert len([u for u in page.puts if u.endswith("?order=0")]) == 1
    assert len([u for u in page.puts if u.endswith("?order=1")]) == 4  # 1 + 3 by itself

    page.unroute("**/items/*?order=1")
    page.click("#file-list li[data-state=failed] button.retry")
    page.wait_for_selector("#file-list li[data-state=done] >> text=lesion-02.jpg")
    assert page.locator("#file-list button.retry").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") == 390
    assert page.errors == []


def held(app: Flask, batch_id: str) -> tuple[str, int]:
    """The batch's status and how many of its photos it holds."""
    with services(app).db.session() as db:
        batch = db.get(Batch, batch_id)
        assert batch is not None
        return batch.status, len(db.scalars(select(BatchItem).where(
            BatchItem.batch_id == batch_id, BatchItem.status == "held")).all())


def test_new_batch_asks_before_leaving_photos_not_stored(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    app = live[0]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    open_with(page, tmp_path / "photos", visit())
    page.wait_for_function("() => document.querySelectorAll('.batch-item').length === 2")
    first = page.evaluate("location.hash.slice(1)")

    page.click("#new-batch")
    question = page.locator("#new-batch-dialog")
    assert question.is_visible()
    assert " ".join(question.inner_text().split()) == (
        "Start a new batch? 2 photos of this batch are not stored yet: a new batch discards "
        "them for good. Keep this batch Discard them and start a new batch")
    page.click("#new-batch-dialog button[value=keep]")
    assert question.is_hidden()
    assert page.evaluate("location.hash.slice(1)") == first
    assert page.locator(".batch-item").count() == 2
    assert held(app, first) == (BatchStatus.OPEN, 2)
    assert page.evaluate("document.activeElement.id") == "new-batch"

    page.click("#new-batch")
    page.click("#new-batch-dialog button[value=discard]")
    page.wait_for_function(f"() => location.hash.slice(1) !== '{first}'")
    page.wait_for_selector("#review[hidden]", state="attached")
    assert held(app, first) == (BatchStatus.DISCARDED, 0)
    second = page.evaluate("location.hash.slice(1)")
    assert held(app, second) == (BatchStatus.OPEN, 0)

    page.click("#new-batch")  # nothing to lose: no question
    page.wait_for_function(f"() => location.hash.slice(1) !== '{second}'")
    assert question.is_hidden()
    assert dialogs == []


SEEN = """(el) => {
  const box = el.getBoundingClientRect();
  const bar = document.querySelector(".appbar").getBoundingClientRect();
  return {text: el.textContent, role: el.getAttribute("role"),
          focused: document.activeElement === el,
          onScreen: box.top >= bar.bottom && box.bottom <= innerHeight};
}"""
"""What a message shows the user: its text, its role, whether it has focus and whether it is
on the screen (below the sticky app bar)."""


def check_phone_page(page: Any, axe_script: Path) -> None:
    """No serious or critical axe-core violation, no tap target under 44 px, no sideways
    scrolling."""
    page.add_script_tag(path=str(axe_script))
    assert page.evaluate(AXE_RUN) == []
    assert page.evaluate(TAP_TARGETS) == []
    assert page.evaluate("document.documentElement.scrollWidth") == 390


def painted(page: Any, photos: int) -> None:
    """Wait until the review shows ``photos`` photos, each with its thumbnail drawn (the last
    redraws the files cause)."""
    page.wait_for_function(f"""() => {{
      const thumbs = document.querySelectorAll("canvas.batch-thumb");
      return thumbs.length === {photos} && [...thumbs].every((c) => c.width !== 300); }}""")


def test_review_problems_are_said_in_the_group_confirmed(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path, axe_script: Path) -> None:
    """A group of twelve photos is thousands of pixels tall on a phone: a site not in the list
    and a confirmation the server refuses are said above its Confirm button, as an alert that
    takes focus on the screen, not at the top of the page; once confirmed, focus is on the
    group's result."""
    app = live[0]
    lesions = [replace(lesion(i % 10 + 1, i + 2, PATIENT_A), name=f"lesion-{i + 1:02d}.jpg")
               for i in range(11)]
    open_with(page, tmp_path / "photos", [label("zx_code128-2_05.png", 1, PATIENT_A), *lesions])
    group = page.locator(".batch-group:not(.unsorted)")
    confirm = group.locator("button.confirm:not([disabled])")
    confirm.wait_for()
    painted(page, 12)
    assert group.bounding_box()["height"] > 3 * 844

    group.locator("input.site").fill("Elbow somewhere")
    confirm.click()
    said = group.locator("p.alert")
    assert said.evaluate(SEEN) == {"text": "Choose the body site from the list.",
                                   "role": "alert", "focused": True, "onScreen": True}
    assert page.locator("#batch-error").is_hidden()
    check_phone_page(page, axe_script)

    page.route("**/confirm", lambda route: route.fulfill(
        status=409, content_type="application/json", body=json.dumps({"error": {
            "code": "conflict", "message": "the group changed: check it and confirm again"}})))
    group.locator("input.site").fill("Forearm")
    group.locator("input[type=radio][value=R]").check()
    confirm.click()
    said.filter(has_text="the group changed").wait_for()
    assert said.evaluate(SEEN) == {"text": "the group changed: check it and confirm again",
                                   "role": "alert", "focused": True, "onScreen": True}
    assert page.locator("#batch-error").is_hidden()
    with services(app).db.session() as db:
        assert db.scalar(select(Instance.sop_uid)) is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-batch-confirm-refused.png"))

    page.unroute("**/confirm")
    confirm.click()
    page.wait_for_selector(".batch-group.confirmed")
    assert said.count() == 0
    result = group.locator(".batch-result")
    seen = result.evaluate(SEEN)
    assert seen["text"] == f"Stored 12 photos for BATCH, Anna · MRN {PATIENT_A}."
    assert (seen["focused"], seen["onScreen"]) == (True, True)
    assert page.errors == []


def test_adding_a_patient_by_mrn_says_what_it_found(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path, axe_script: Path) -> None:
    """Beside the form: a sentence for an MRN of only spaces (nothing sent), the patient found
    (name and MRN) and that photos can be moved to them, or that no patient has the MRN. The
    MRNs travel in request bodies only."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    open_with(page, tmp_path / "photos", visit())
    painted(page, 2)
    mrn, add = page.locator("#manual-mrn"), page.locator("#manual-form button[type=submit]")
    error, found = page.locator("#manual-error"), page.locator("#manual-found")

    mrn.fill("   ")
    add.click()
    assert error.evaluate(SEEN) == {"text": "Type the patient's MRN.", "role": "alert",
                                    "focused": False, "onScreen": True}
    assert page.evaluate("document.activeElement.id") == "manual-mrn"
    assert mrn.get_attribute("aria-invalid") == "true"
    assert found.inner_text() == ""
    check_phone_page(page, axe_script)

    boris = "42094043"
    mrn.fill(f" {boris} ")
    add.click()
    found.filter(has_text="Found").wait_for()
    assert found.evaluate(SEEN) == {
        "text": f"Found BATCH, Boris · MRN {boris} ({ISSUER}). "
                "Move their photos to them with “Move to…” on each photo.",
        "role": "status", "focused": False, "onScreen": True}
    assert error.is_hidden() and mrn.get_attribute("aria-invalid") is None
    assert mrn.input_value() == ""
    menu = page.locator(".batch-item select.move").first
    assert f"BATCH, Boris · MRN {boris}" in menu.inner_text()

    mrn.fill(UNKNOWN_MRN)
    add.click()
    error.filter(has_text="No patient").wait_for()
    assert error.evaluate(SEEN) == {
        "text": f"No patient found for MRN {UNKNOWN_MRN}. Check the number (and the issuer).",
        "role": "alert", "focused": False, "onScreen": True}
    assert page.evaluate("document.activeElement.id") == "manual-mrn"
    assert mrn.input_value() == UNKNOWN_MRN  # to be corrected
    assert found.inner_text() == ""
    assert f"MRN {UNKNOWN_MRN}" not in menu.inner_text()  # photos there could not be stored
    check_phone_page(page, axe_script)

    assert [u for u in urls if any(m in u for m in (*PATIENTS, UNKNOWN_MRN))] == []
    assert page.errors == []


def focused(page: Any) -> str:
    """The element with focus, as its tag and the focus key it carries ("body" when nothing
    has focus)."""
    return page.evaluate("""() => { const el = document.activeElement;
      return el === document.body ? "body"
        : `${el.tagName.toLowerCase()} ${el.dataset.focus}`; }""")


def test_focus_stays_on_the_control_used_when_the_lists_are_drawn_again(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path, axe_script: Path) -> None:
    """Retry, Drop, Move and Confirm each redraw their list: focus stays on the file's row
    (Retry is gone once it is sent), on the photo's Drop box, on its "Move to…" menu in the
    group it went to, and on the confirmed group's result line; never on the page itself."""
    first, second = lesion(2, 2, PATIENT_A), lesion(3, 3, PATIENT_A)
    page.route("**/items/*?order=2", lambda route: route.fulfill(
        status=503, content_type="text/html", body="<html><body>Bad gateway</body></html>"))
    open_with(page, tmp_path / "photos", [*visit(), second])
    retry = page.locator("#file-list li[data-state=failed] button.retry")
    retry.wait_for()
    uuid = retry.evaluate("(b) => b.closest('li').dataset.uuid")
    page.unroute("**/items/*?order=2")
    retry.click()
    page.wait_for_selector(f"#file-list li[data-uuid='{uuid}'][data-state=done]")
    assert focused(page) == f"li file:{uuid}"
    painted(page, 3)

    item = page.locator(f".batch-item[data-uuid='{uuid}']")
    item.locator("input.drop").check()
    page.wait_for_selector(f".batch-item.dropped[data-uuid='{uuid}']")
    assert focused(page) == f"input drop:{uuid}"
    item.locator("input.drop").uncheck()
    page.wait_for_selector(f".batch-item:not(.dropped)[data-uuid='{uuid}']")
    assert focused(page) == f"input drop:{uuid}"

    page.fill("#manual-mrn", "42094043")
    page.click("#manual-form button[type=submit]")
    option = page.locator(".batch-item select.move option", has_text="Boris").first
    option.wait_for(state="attached")  # the patient added: offered in the menus
    boris = option.get_attribute("value")
    item.locator("select.move").select_option(boris)
    page.wait_for_selector(f".batch-group[data-group-id='{boris}'] "
                           f".batch-item[data-uuid='{uuid}']")
    assert focused(page) == f"select move:{uuid}"
    check_phone_page(page, axe_script)

    page.locator(f".batch-group[data-group-id='{boris}'] button.confirm").click()
    page.wait_for_selector(f".batch-group.confirmed[data-group-id='{boris}']")
    assert focused(page) == f"p result:{boris}"
    assert first.name in page.inner_text(".batch-group:not(.confirmed)")
    assert page.errors == []


def test_confirm_stays_disabled_until_its_request_is_answered(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """A photo sent while a group's confirmation is on its way redraws the review: the group's
    Confirm button stays disabled, saying it is storing, so a second tap sends nothing."""
    app = live[0]
    held_confirms: list[Any] = []
    page.route("**/confirm", lambda route: held_confirms.append(route))  # let through later
    open_with(page, tmp_path / "photos", visit())
    group = page.locator(".batch-group:not(.unsorted)")
    group.locator("button.confirm:not([disabled])").click()
    page.wait_for_function("() => document.querySelector('.batch-group:not(.unsorted) "
                           "button.confirm').disabled")
    assert len(held_confirms) == 1

    early = lesion(1, 0, None)  # before the label: unsorted, the group does not change
    (tmp_path / "photos" / early.name).write_bytes(early.data)
    page.set_input_files("#files", str(tmp_path / "photos" / early.name))
    page.wait_for_selector(".batch-group.unsorted .batch-item")  # drawn again with it
    button = group.locator("button.confirm")
    assert (button.is_disabled(), button.inner_text()) == (True, "Storing…")
    button.click(force=True)  # the second tap
    assert len(held_confirms) == 1
    with services(app).db.session() as db:
        assert db.scalar(select(Instance.sop_uid)) is None

    held_confirms[0].continue_()
    page.wait_for_selector(".batch-group.confirmed")
    assert len(held_confirms) == 1
    assert page.errors == []
