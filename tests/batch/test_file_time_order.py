"""The batch page orders photos without a capture time (no EXIF DateTimeOriginal) by their file
time (File.lastModified), then by name, and says so."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

from tests.batch.conftest import jpeg
from tests.batch.test_batch_page import group_items, live, open_batch, page
from tests.conftest import BARCODES, CHARTS, HoldPuts

__all__ = ["live", "page"]  # the fixtures, for pytest

FILE_TIME = 1_714_557_600  # 2024-05-01 10:00 UTC


def test_photos_without_capture_time_follow_file_time_then_name(
        live: tuple[Flask, str, HoldPuts], page: Any, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    # None has an EXIF time. By name the lesions come first (and sort into no group); by file
    # time the label comes first and starts its patient's group: the lesions follow it, the
    # two written in the same second by name (lesion-9 before lesion-10).
    files = [("z-label.jpg", jpeg(BARCODES / "zx_code128-2_05.png", None), 0),
             ("lesion-10.jpg", jpeg(CHARTS / "jtvd_classic_01.jpg", None), 60),
             ("lesion-9.jpg", jpeg(CHARTS / "jtvd_classic_02.jpg", None), 60),
             ("a-lesion.jpg", jpeg(CHARTS / "jtvd_classic_03.jpg", None), 120)]
    for name, data, offset in files:
        path = folder / name
        path.write_bytes(data)
        os.utime(path, (FILE_TIME + offset, FILE_TIME + offset))

    open_batch(page)
    assert "without a capture time (no EXIF date) is placed by its file time, then its " \
        "name" in " ".join(page.inner_text("#batch").split())
    page.set_input_files("#files", [str(folder / name) for name, _, _ in files])
    page.wait_for_function("() => document.querySelectorAll('.batch-item').length === 4")

    batch = page.request.get(f"/api/v1/batches/{page.evaluate('location.hash.slice(1)')}")
    items = {i["upload_uuid"]: i for i in batch.json()["items"]}
    names = {u: page.inner_text(f".batch-item[data-uuid='{u}'] .batch-name") for u in items}
    by_order = sorted(items.values(), key=lambda i: i["order"])
    assert [names[i["upload_uuid"]] for i in by_order] == [
        "z-label.jpg", "lesion-9.jpg", "lesion-10.jpg", "a-lesion.jpg"]
    assert all(i["acquired_at"] is None for i in by_order)
    shown = group_items(page)
    assert "unsorted" not in shown
    [group] = shown.values()
    assert [names[u] for u in group] == [
        "z-label.jpg", "lesion-9.jpg", "lesion-10.jpg", "a-lesion.jpg"]
    tags = page.inner_text(f".batch-item[data-uuid='{group[1]}'] .batch-tags")
    assert "no capture time: placed by file time, then name" in tags
    assert page.errors == []
