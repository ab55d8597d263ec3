"""A study whose photos were all rejected (moved to another patient, poor quality, retention)
opened in the viewer at phone size: it says why in words, shows no tools, and no script
error (it used to answer "Cannot read properties of undefined (reading 'original')")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.pipeline.dicom.kos import RejectionReason
from app.workflow.corrections import reject
from tests.conftest import ARTIFACTS, AXE_RUN, PHONE, TAP_TARGETS, Browser, services
from tests.viewer.conftest import photo, viewing


@pytest.mark.parametrize(("reason", "said"), [
    (RejectionReason.PATIENT_SAFETY, "moved to another patient or withdrawn for patient safety"),
    (RejectionReason.QUALITY, "rejected for quality reasons"),
])
def test_a_study_with_every_photo_rejected_says_why_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser, axe_script: Path, reason: RejectionReason, said: str) -> None:
    viewer = viewing(client, auth, live_server, [photo("jtvd_classic_02.jpg")])
    reject(services(app), viewer.study.originals[0], reason, actor="admin")

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE, ready="#message:not([hidden])")
        page.add_script_tag(path=str(axe_script))
        out = {"heading": page.text_content("h1"), "message": page.text_content("#message"),
               "shown": page.eval_on_selector_all(  # no empty banner facts, series, tools
                   ".banner dl, .layout > *", "parts => parts.filter(p => !p.hidden).length"),
               "axe": page.evaluate(AXE_RUN), "small": page.evaluate(TAP_TARGETS),
               "width": page.evaluate("document.documentElement.scrollWidth")}
        page.screenshot(path=str(ARTIFACTS / f"viewer-rejected-{reason.value}-390x844.png"))
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    assert seen["heading"] == "No photos to show" and said in seen["message"]
    assert seen["shown"] == 0
    assert seen["axe"] == [] and seen["small"] == []
    assert seen["width"] <= PHONE["viewport"]["width"]
