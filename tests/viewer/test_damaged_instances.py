"""A stored instance whose pixel data is damaged (a truncated JPEG fragment, Pixel Data cut
off) is not a server crash: its ``rendered`` and ``thumbnail`` answer 409 ``damaged_instance``
with a JSON body naming no PHI, logged once without PHI or traceback; a multipart answer that
meets it mid-stream ends without its closing boundary, logged the same way."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.encaps import encapsulate, generate_frames

from app.db.models import Instance
from app.gateways.archive import InstanceKey
from app.pipeline.dicom.builder import VL_PHOTOGRAPHIC_IMAGE_STORAGE
from tests.conftest import Browser, services
from tests.viewer.conftest import CHART, PATIENT, photo, store_earlier_study

PHI = (PATIENT["id"], PATIENT["name"], "DEMO", "ALICE", "1950", "19500314")
DamageFn = Callable[[pydicom.Dataset], None]


def _truncated_fragment(ds: pydicom.Dataset) -> None:
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:len(frame) // 2]])


def _garbage_fragment(ds: pydicom.Dataset) -> None:
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(2000)])


def _no_fragment(ds: pydicom.Dataset) -> None:
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty offset table, then nothing


def damaged_study(app: Flask, damage: DamageFn) -> tuple[str, str, str]:
    """A photo's study whose stored file then had its pixel data damaged by ``damage`` (the
    file rewritten in place, as a disk or a bad copy would leave it): its UIDs."""
    study = store_earlier_study(app, photo(CHART), datetime(2024, 5, 1, 10, tzinfo=UTC))
    svc = services(app)
    sop = study.originals[0]
    with svc.db.session() as db:
        row = db.get(Instance, sop)
        assert row is not None
        path = svc.archive.path(row)
        ds = pydicom.dcmread(path)
        damage(ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        db.delete(row)
        db.flush()
        path.unlink()
        svc.archive.store(db, InstanceKey(study.study_uid, study.original_series, sop,
                                          VL_PHOTOGRAPHIC_IMAGE_STORAGE), out.getvalue())
    return study.study_uid, study.original_series, sop


def _no_phi(text: str) -> None:
    for value in PHI:
        assert value not in text


@pytest.mark.parametrize("damage", [_truncated_fragment, _garbage_fragment, _no_fragment])
def test_damaged_pixel_data_answers_409_with_a_clear_body_logged_once(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        caplog: pytest.LogCaptureFixture, damage: DamageFn) -> None:
    study, series, sop = damaged_study(app, damage)
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    urls = [f"{instance}/rendered", f"{instance}/rendered?viewport=300,300",
            f"{instance}/thumbnail", f"/dicomweb/studies/{study}/thumbnail",
            f"/dicomweb/studies/{study}/series/{series}/thumbnail",
            f"/dicomweb/studies/{study}/rendered"]
    for url in urls:
        for accept in ("image/jpeg", "image/png", "*/*"):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                got = client.get(url, headers={**auth["view"], "Accept": accept})
            assert got.status_code == 409, (url, accept, got.status_code)
            assert got.mimetype == "application/json"
            error = got.get_json()["error"]
            assert error["code"] == "damaged_instance"
            assert "damaged" in error["message"]
            _no_phi(got.get_data(as_text=True))
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert "damaged" in errors[0].getMessage() and errors[0].exc_info is None
            _no_phi("\n".join(r.getMessage() for r in caplog.records))
    # The instance itself is still retrievable as stored: the archive keeps what it has.
    kept = client.get(instance, headers={**auth["view"], "Accept": "multipart/related; "
                                         'type="application/dicom"'})
    assert kept.status_code == 200


def test_a_multipart_rendering_meeting_damage_ends_without_its_closing_boundary(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    study, series, _ = damaged_study(app, _truncated_fragment)
    with caplog.at_level(logging.INFO):
        got = client.get(f"/dicomweb/studies/{study}/series/{series}/rendered",
                         headers={**auth["view"],
                                  "Accept": 'multipart/related; type="image/jpeg"'})
        body = got.get_data()
    assert got.status_code == 200  # sent before the part was rendered
    marker = got.mimetype_params["boundary"]
    assert not body.rstrip().endswith(f"--{marker}--".encode())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    _no_phi("\n".join(r.getMessage() for r in caplog.records))


def test_the_viewer_says_the_image_is_damaged(app: Flask, auth: dict[str, dict[str, str]],
                                              live_server: str, chromium: Browser) -> None:
    study, _, _ = damaged_study(app, _truncated_fragment)
    token = auth["view"]["Authorization"].removeprefix("Bearer ")

    def scenario(browser: Any) -> dict[str, Any]:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.add_init_script(f"sessionStorage.setItem('ebiw.token', {token!r})")
        page.goto(f"{live_server}/studies/{study}")
        # never "ready" (no image is painted): wait for the thumbnail marked missing
        page.wait_for_selector(".thumb img.missing", state="attached", timeout=20_000)
        status = page.locator("#stage-main .stage-status")
        status.wait_for(state="visible", timeout=20_000)
        for _ in range(100):
            if "damaged" in (status.text_content() or ""):
                break
            page.wait_for_timeout(100)
        out = {"status": status.text_content(), "page": page.content()}
        page.close()
        return out

    seen = chromium.run(scenario)
    assert seen["status"].startswith("Image not available (the stored pixel data of this "
                                     "instance is damaged")
    _no_phi(seen["status"])
