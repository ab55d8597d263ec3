"""The batch page on a phone (a Pixel 7, 390×844) in Debian's Chromium, as a clinic assistant
uses it: a confirmed group still fits the screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.batch.conftest import Shot, label, lesion
from tests.batch.test_batch_clips import PATIENT_A
from tests.batch.test_batch_page import PASSWORD, USER, live, page
from tests.conftest import PHONE, TAP_TARGETS, HoldPuts

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

