"""The batch page on a phone (a Pixel 7, 390×844) in Debian's Chromium, as a clinic assistant
uses it: a confirmed group still fits the screen, a file the server or a proxy refuses says
why in words with its name readable, and "New batch" asks before it leaves photos that are
not stored yet (and discards them on the server only when told to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.db.models import Batch, BatchItem, BatchStatus
from tests.batch.conftest import Shot, label, lesion
from tests.batch.test_batch_clips import PATIENT_A
from tests.batch.test_batch_page import PASSWORD, USER, live, page
from tests.conftest import ARTIFACTS, PHONE, TAP_TARGETS, HoldPuts, services

__all__ = ["live", "page"]  # the fixtures, for pytest


@pytest.fixture
def screen() -> dict[str, Any]:
    """The page at phone size."""
    return PHONE


def open_with(page: Any, folder: Path, shots: list[Shot]) -> None:
    """Log in, open the batch page and choose ``shots`` (written to ``folder``)."""
    folder.mkdir(exist_ok=True)
    for shot in shots:
        (folder / shot.name).write_bytes(shot.data)
    assert page.request.post("/login", data={"username": USER, "password": PASSWORD}).ok
    page.goto("/batch")
    page.wait_for_selector("#batch:not([hidden])")
    page.set_input_files("#files", [str(folder / shot.name) for shot in shots])


def visit() -> list[Shot]:
    """Patient A's label and one of their lesions."""
    return [label("zx_code128-2_05.png", 1, PATIENT_A), lesion(2, 2, PATIENT_A)]


def test_a_confirmed_group_fits_the_phone(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    open_with(page, tmp_path / "photos", visit())
    page.click(".batch-group:not(.unsorted) button.confirm:not([disabled])")
    page.wait_for_selector(".batch-group.confirmed")
    assert "Confirmed — study 2.25." in page.inner_text(".batch-group.confirmed")
    assert page.evaluate("document.documentElement.scrollWidth") == 390
    assert page.evaluate(TAP_TARGETS) == []


def test_a_refused_file_says_why_in_words_with_its_name_readable(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """The app refuses a file that is no image (its JSON message); a proxy in front of it
    refuses a large one with an HTML page of its own (413): the row says so in words, not
    "the server answered 413", and the file's name keeps its line beside Retry."""
    big = lesion(3, 3, PATIENT_A)
    page.route("**/items/*?order=1", lambda route: route.fulfill(
        status=413, content_type="text/html",
        body="<html><body><h1>413 Request Entity Too Large</h1></body></html>"))
    broken = Shot("camera-roll-broken.jpg", b"not a JPEG at all" * 20, None, None, "clinical")
    open_with(page, tmp_path / "photos", [broken, big])
    page.wait_for_function("() => document.querySelectorAll("
                           "'#file-list li[data-state=failed]').length === 2")
    rows = page.evaluate("""() => [...document.querySelectorAll('#file-list li')].map((li) => {
      const name = li.querySelector('.batch-name').getBoundingClientRect();
      const retry = li.querySelector('button.retry').getBoundingClientRect();
      return {name: li.querySelector('.batch-name').textContent,
              state: li.querySelector('.batch-state').textContent,
              nameWidth: name.width, nameHeight: name.height,
              lineHeight: parseFloat(getComputedStyle(li).lineHeight),
              retry: [retry.width, retry.height]}; })""")
    assert [(r["name"], r["state"]) for r in rows] == [
        ("camera-roll-broken.jpg",
         "not a supported image (expected JPEG, PNG, HEIC, TIFF or WebP)"),
        ("lesion-03.jpg", "the file is too large for the server (error 413)")]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-batch-refused.png"), full_page=True)
    for row in rows:
        assert row["nameHeight"] < 2 * row["lineHeight"], row  # one line, not a letter a line
        assert row["nameWidth"] > 150, row
        assert min(row["retry"]) >= 44, row
    assert page.evaluate("document.documentElement.scrollWidth") == 390


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
