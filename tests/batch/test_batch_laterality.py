"""The batch page asks a group's body site and, for a paired one, its side before confirming:
the stored photos carry that Image Laterality (never U when a side was chosen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from flask import Flask
from sqlalchemy import select

from app.db.models import Instance
from tests.batch.conftest import label, lesion
from tests.batch.test_batch_page import live, open_with, page
from tests.conftest import HoldPuts, services

__all__ = ["live", "page"]  # the fixtures, for pytest


def test_confirming_with_a_site_and_side_stores_that_laterality(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    app = live[0]
    shots = [label("zx_code128-2_05.png", 1, "15182881"), lesion(2, 2, "15182881"),
             lesion(3, 3, "15182881")]
    open_with(page, tmp_path / "photos", shots)
    page.wait_for_selector(".batch-group:not(.unsorted) button.confirm:not([disabled])")
    group = page.locator(".batch-group:not(.unsorted)")
    sides = group.locator("fieldset.sides")
    assert sides.is_hidden()

    # A paired site without its side is not sent.
    group.locator("input.site").fill("Forearm")
    assert sides.is_visible()
    group.locator("button.confirm").click()
    assert group.locator("p.alert").inner_text() == "Choose the side (right, left or both)."
    assert page.locator("#batch-error").is_hidden()
    with services(app).db.session() as db:
        assert db.scalar(select(Instance.sop_uid)) is None

    group.locator("input[type=radio][value=R]").check()
    group.locator("button.confirm").click()
    page.wait_for_selector(".batch-group.confirmed")
    assert group.locator("p.alert").count() == 0
    root = services(app).settings.archive_root
    stored = [pydicom.dcmread(path, stop_before_pixels=True) for path in root.rglob("*.dcm")]
    clinical = [ds for ds in stored if "AnatomicRegionSequence" in ds]
    labels = [ds for ds in stored if "AnatomicRegionSequence" not in ds]
    assert len(clinical) == 4 and len(labels) == 1  # two lesions and their normalized copies
    assert {(ds.AnatomicRegionSequence[0].CodeValue, ds.ImageLaterality) for ds in clinical} \
        == {("14975008", "R")}
    assert labels[0].ImageLaterality == "U"  # the label photo: no site was asked for it
    assert page.errors == []
