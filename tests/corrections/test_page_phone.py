"""The corrections page on a phone (390×844) in Chromium, served under a deployment's CSP:
nothing wider than the screen, tap targets of at least 44×44 px, axe-core finding no serious
or critical violation, in the states a correction goes through."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    served_as_deployed,
)


@pytest.fixture
def app_overrides() -> dict[str, object]:
    return {"color_normalization": False, "emr_notifiers": ""}


def phone_page(browser: Any, url: str, username: str) -> Any:
    """A page at phone size in a context logged in as ``username``; axe is injected into it,
    so its context bypasses the CSP (the CSP itself is checked by the other phone tests)."""
    context = browser.new_context(**PHONE, bypass_csp=True)
    assert context.request.post(f"{url}/login", data={
        "username": username, "password": PASSWORD}).ok
    return context.new_page()


def measured(page: Any, axe_script: Path, name: str) -> dict[str, Any]:
    """The page's width, its small tap targets, axe's violations and its text; a screenshot
    in tests/.artifacts/phone-<name>.png."""
    page.screenshot(path=str(ARTIFACTS / f"phone-{name}.png"), full_page=True)
    seen = {"width": page.evaluate("document.documentElement.scrollWidth"),
            "small": page.evaluate(TAP_TARGETS), "text": page.locator("main").inner_text()}
    page.add_script_tag(path=str(axe_script))
    seen["axe"] = page.evaluate(AXE_RUN)
    return seen


def test_an_error_naming_a_uid_wraps_and_reads_as_a_sentence(
        app: Flask, users: dict[str, str], chromium: Browser, axe_script: Path) -> None:
    unknown = f"2.25.{uuid.uuid4().int}.9"

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        page = phone_page(browser, url, users["admin"])
        page.goto(f"{url}/admin/corrections")
        page.fill("#instance", unknown)
        page.click("form[action$='/reject'] button[type=submit]")
        page.wait_for_selector("p.alert")
        return measured(page, axe_script, "corrections-unknown-uid")

    with served_as_deployed(app) as (url, _):
        seen = chromium.run(lambda browser: scenario(browser, url))
    assert f"No archived instance has SOP Instance UID {unknown}." in seen["text"]
    assert seen["width"] <= 390 and seen["small"] == [] and seen["axe"] == []
