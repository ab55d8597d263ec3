"""The batch page in Debian's Chromium (Playwright): drop the slip-sheet batch, pause and
resume, review the groups the server sorted, move a photo, confirm, and find the instances in
the archive; a reload with the same files sends nothing again. Strict CSP, no page errors."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from sqlalchemy import select

from app.db.models import CaptureSession, Delivery, Instance, Photo
from app.factory import create_app
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.workflow.accounts import create_user
from tests.batch.conftest import (
    ISSUER,
    UNKNOWN_MRN,
    Shot,
    import_patients,
    label,
    upload_uuid_for,
)
from tests.batch.test_batch_clips import PATIENT_A
from tests.clips import make_clip
from tests.conftest import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    HoldPuts,
    served_as_deployed,
    services,
)

USER, PASSWORD = "derm.batch", "a long enough test password"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Flask, str, HoldPuts]]:
    """The app (SQLite, local archive) on a free loopback port, the batch's patients in the
    local index, one capture user; the strict CSP a deployment adds."""
    app = create_app({"data_dir": tmp_path / "var", "env": "test"})
    svc = services(app)
    svc.db.create_schema()
    import_patients(app, tmp_path)
    create_user(svc.db, USER, PASSWORD, "capture")
    try:
        with served_as_deployed(app) as (url, slow):
            yield app, url, slow
    finally:
        svc.db.engine.dispose()


@pytest.fixture
def page(live: tuple[Flask, str, HoldPuts], screen: dict[str, Any]) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("the browser test needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live[1], **screen)
        context.set_default_timeout(30000)
        tab = context.new_page()
        tab.errors = []
        tab.puts = []
        tab.on("pageerror", lambda error: tab.errors.append(str(error)))
        # The browser logs each error answer; those (a 4xx refusal, a 503 a test routes to
        # stand for a failing gateway) are what the page must handle, not its errors.
        tab.on("console", lambda message: tab.errors.append(message.text)
               if message.type == "error" and "status of 4" not in message.text
               and "status of 503" not in message.text else None)
        tab.on("request", lambda request: tab.puts.append(request.url)
               if request.method == "PUT" else None)
        try:
            yield tab
        finally:
            context.close()
            browser.close()


def open_batch(page: Any) -> None:
    """Log in as the batch user and open a new batch on the batch page."""
    login = page.request.post("/login", data={"username": USER, "password": PASSWORD})
    assert login.ok, login.text()
    page.goto("/batch")
    page.wait_for_selector("#batch:not([hidden])")


def open_with(page: Any, folder: Path, shots: list[Shot]) -> None:
    """`open_batch` and choose ``shots`` (written to ``folder``)."""
    folder.mkdir(exist_ok=True)
    for shot in shots:
        (folder / shot.name).write_bytes(shot.data)
    open_batch(page)
    page.set_input_files("#files", [str(folder / shot.name) for shot in shots])


def group_items(tab: Any) -> dict[str, list[str]]:
    """Group id (or "unsorted") -> upload UUIDs shown in it, in order."""
    return tab.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '.batch-group')].map((g) => [g.dataset.groupId, [...g.querySelectorAll(
        '.batch-item')].map((i) => i.dataset.uuid)]))""")


def test_batch_page_uploads_sorts_moves_and_confirms(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path,
        batch_shots: tuple[Shot, ...]) -> None:
    app, _, slow = live
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for order, shot in enumerate(batch_shots):
        path = folder / f"{order:02d}-{shot.name}"
        path.write_bytes(shot.data)
        paths.append(str(path))

    open_batch(page)
    batch_id = page.evaluate("location.hash.slice(1)")
    uuid_of = {shot.name: upload_uuid_for(batch_id, hashlib.sha256(shot.data).hexdigest())
               for shot in batch_shots}

    # Drop the files; pause while uploads are held on the server, then resume.
    slow.seconds = 0.4
    page.set_input_files("#files", paths)
    page.wait_for_selector("#file-list li[data-state=uploading]")
    page.click("#pause")
    page.wait_for_selector("#resume:not([hidden])")
    page.wait_for_function("() => !document.querySelector('#file-list li[data-state=uploading]')")
    done = page.locator("#file-list li[data-state=done]").count()
    assert done < len(paths)
    assert page.locator("#file-list li[data-state=queued]").count() == len(paths) - done
    slow.seconds = 0.0
    page.click("#resume")
    page.wait_for_function(f"() => document.querySelectorAll("
                           f"'#file-list li[data-state=done]').length === {len(paths)}")
    page.wait_for_function("() => document.querySelectorAll('.batch-item').length === "
                           f"{len(paths)}")

    # The review shows the groups exactly as the slip sheets sort them.
    with services(app).db.session() as db:
        assert db.scalar(select(Photo.upload_uuid)) is None  # nothing stored yet
        assert db.scalar(select(Delivery.id)) is None
    shown = group_items(page)
    expected: dict[str | None, list[str]] = {}
    for shot in sorted(batch_shots, key=lambda s: s.minute if s.minute is not None else 2.5):
        expected.setdefault(shot.expect, []).append(uuid_of[shot.name])
    assert sorted(shown.values()) == sorted(expected.values())
    assert shown["unsorted"] == expected[None]

    # Move the unsorted lesion into B's group (by its patient's name in the menu).
    b_group = next(gid for gid, uuids in shown.items() if expected["42094043"][0] in uuids)
    moved = expected[None][0]
    page.select_option(f".batch-item[data-uuid='{moved}'] select.move", b_group)
    page.wait_for_selector(f".batch-group[data-group-id='{b_group}'] "
                           f".batch-item[data-uuid='{moved}']")
    assert page.locator(".batch-group.unsorted").count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch-review.png"), full_page=True)

    # C's label is not in the directory: its group cannot be confirmed as it is.
    c_group = next(gid for gid, uuids in shown.items() if expected[UNKNOWN_MRN][0] in uuids)
    assert page.locator(f".batch-group[data-group-id='{c_group}'] button.confirm").is_disabled()
    for gid in shown:
        if gid in (c_group, "unsorted"):
            continue
        page.click(f".batch-group[data-group-id='{gid}'] button.confirm")
        page.wait_for_selector(f".batch-group.confirmed[data-group-id='{gid}']")

    stored = sum(len(v) for k, v in expected.items() if k not in (None, UNKNOWN_MRN)) + 1
    with services(app).db.session() as db:
        photos = list(db.scalars(select(Photo)))
        sessions = {s.id: s for s in db.scalars(select(CaptureSession))}
        instances = list(db.scalars(select(Instance)))
    assert len(photos) == stored and len(sessions) == 3
    by_uuid = {p.upload_uuid: sessions[p.session_id] for p in photos}
    assert (by_uuid[moved].patient_id, by_uuid[moved].issuer) == ("42094043", ISSUER)
    archive = services(app).settings.archive_root
    assert len(list(archive.rglob("*.dcm"))) == len(instances) >= stored

    # Reload: the batch comes back from the server; the same files are not sent again.
    puts = len(page.puts)
    page.reload()
    page.wait_for_selector(".batch-group.confirmed")
    page.set_input_files("#files", paths)
    page.wait_for_function(f"() => document.querySelectorAll("
                           f"'#file-list li[data-state=done]').length === {len(paths)}")
    assert len(page.puts) == puts
    assert page.errors == []


def test_a_group_holding_a_clip_asks_for_its_body_site(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    """DICOM requires a video's anatomic region: the group's site field says it is needed,
    confirming without one shows why and stores nothing, and with one the clip is stored
    with it."""
    app = live[0]
    folder = tmp_path / "visit"
    folder.mkdir()
    (folder / "01-label.jpg").write_bytes(label("zx_code128-2_05.png", 1, PATIENT_A).data)
    clip = make_clip(folder / "02-depth.mp4")
    login = page.request.post("/login", data={"username": USER, "password": PASSWORD})
    assert login.ok, login.text()
    page.goto("/batch")
    page.wait_for_selector("#batch:not([hidden])")
    page.set_input_files("#files", [str(folder / "01-label.jpg"), str(clip)])
    page.wait_for_function("() => document.querySelectorAll('.batch-item').length === 2")
    group = page.locator(".batch-group:not(.unsorted)")
    site = group.locator("input.site")
    assert site.get_attribute("placeholder") == "Body site (needed for the clip)"
    group.locator("button.confirm").click()
    assert group.locator("p.alert").inner_text() == (
        "Choose the body site: a video clip needs one (or drop the clip).")
    assert page.locator("#batch-error").is_hidden()
    with services(app).db.session() as db:
        assert db.scalar(select(Photo.upload_uuid)) is None
    site.fill("Forearm")
    group.locator("input[type=radio][value=R]").check()
    group.locator("button.confirm").click()
    page.wait_for_selector(".batch-group.confirmed")
    with services(app).db.session() as db:
        [instance] = [i for i in db.scalars(select(Instance))
                      if i.sop_class_uid == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE]
    ds = pydicom.dcmread(io.BytesIO(services(app).archive.read(instance)),
                         stop_before_pixels=True)
    assert (ds.AnatomicRegionSequence[0].CodeValue, ds.ImageLaterality) == ("14975008", "R")
    assert page.errors == []
