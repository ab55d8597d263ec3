"""Browser tests of the capture app: a real server on loopback, Debian's Chromium with a fake
camera that shows a real photo, driven by Playwright (sync API).

Skipped as a whole when /usr/bin/chromium is absent. Screenshots and timings go to
``tests/.artifacts/`` (git-ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy import func, select

from app.db.models import CaptureSession, Encounter, Instance, Patient, Photo
from app.factory import create_app
from app.workflow.accounts import create_user
from app.workflow.demo import seed_demo_patients
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    BARCODES,
    CHARTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    TAP_TARGETS,
    HoldPuts,
    served_as_deployed,
    services,
)

USER, PASSWORD = "nurse.e2e", "a long enough test password"
WRISTBAND_MRN = "15182881"  # what zx_code128-2_05.png carries (Code 128)
CHART_PHOTO = CHARTS / "oycq_data_iphone.jpg"  # 4032×3024 iPhone photo of a ColorChecker
NO_CHART_PHOTO = CHARTS / "karnehen_cam2_nochart.jpg"  # a scene without a colour chart
# px at PHOTO_SIZE: the "chart-blurred" camera. Sigma 8 is borderline in a 640 px preview
# (1.3 px there; sharpness 36 against the preview threshold 35), 12 is plainly blurry in both.
BLUR_SIGMA = 12.0
WRISTBAND_PHOTO = BARCODES / "zx_code128-2_05.png"
PHOTO_SIZE = (4000, 3000)  # 12 MP


def write_y4m(source: Path, size: tuple[int, int], target: Path, blur_sigma: float = 0.0, *,
              frames: int = 1, rate: int = 1) -> Path:
    """``source`` at ``size`` (Gaussian-blurred by ``blur_sigma`` px at that size when given)
    as a Y4M (I420) file for Chromium's fake camera: one frame at 1 fps, or ``frames`` frames
    at ``rate`` fps panning one pixel a frame across the photo (a moving camera, for clips)."""
    width, height = size
    image = ImageOps.fit(ImageOps.exif_transpose(Image.open(source)).convert("RGB"),
                         (width + frames - 1, height))
    if blur_sigma:
        image = image.filter(ImageFilter.GaussianBlur(blur_sigma))  # radius is the sigma
    ycc = np.asarray(image.convert("YCbCr"))
    with target.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{rate}:1 Ip A1:1 C420jpeg\n".encode())
        for shift in range(frames):
            frame = ycc[:, shift:shift + width]
            chroma = [np.asarray(Image.fromarray(np.ascontiguousarray(frame[:, :, i])).resize(
                (width // 2, height // 2))) for i in (1, 2)]
            out.write(b"FRAME\n" + np.ascontiguousarray(frame[:, :, 0]).tobytes())
            for plane in chroma:
                out.write(plane.tobytes())
    return target


@dataclass
class LiveApp:
    """The app served on loopback for one test."""

    flask: Flask
    url: str
    hold: HoldPuts  # holds photo uploads on the server for a while (offline tests)

    def counts(self) -> tuple[int, int, int]:
        """(photo rows, instance rows, files in the archive)."""
        svc = services(self.flask)
        with svc.db.session() as db:
            photos = db.scalar(select(func.count()).select_from(Photo)) or 0
            instances = db.scalar(select(func.count()).select_from(Instance)) or 0
        root = svc.settings.archive_root
        files = len([p for p in root.rglob("*.dcm")]) if root.exists() else 0
        return photos, instances, files

    def sessions(self) -> list[CaptureSession]:
        with services(self.flask).db.session() as db:
            return list(db.scalars(select(CaptureSession)))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveApp]:
    """A fresh app (SQLite, local archive, demo patients, one capture user) on a free port."""
    app = create_app({"data_dir": tmp_path / "var", "env": "test"})
    svc = services(app)
    svc.db.create_schema()
    seed_demo_patients(svc.db, svc.settings.default_issuer)
    with svc.db.session() as db:
        patient = Patient(mrn=WRISTBAND_MRN, issuer=svc.settings.default_issuer, family="BAND",
                          given="ERIN", birth_date=date(1971, 5, 9), sex="F")
        patient.encounters.append(Encounter(identifier="ENC2001", department="Wound care",
                                            started=datetime.now(UTC)))
        db.add(patient)
    create_user(svc.db, USER, PASSWORD, "capture")
    try:
        with served_as_deployed(app) as (url, hold):  # the CSP a deployment adds: obeyed
            yield LiveApp(app, url, hold)
    finally:
        svc.db.engine.dispose()


@pytest.fixture(scope="session")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake camera files: the colour chart photo at 12 MP, sharp and blurred, a 12 MP scene
    without a chart, the wristband photo, and the chart photo panned at 30 fps (clips)."""
    folder = tmp_path_factory.mktemp("camera")
    return {"chart": write_y4m(CHART_PHOTO, PHOTO_SIZE, folder / "chart.y4m"),
            "chart-blurred": write_y4m(CHART_PHOTO, PHOTO_SIZE, folder / "chart-blurred.y4m",
                                       BLUR_SIGMA),
            "no-chart": write_y4m(NO_CHART_PHOTO, PHOTO_SIZE, folder / "no-chart.y4m"),
            "wristband": write_y4m(WRISTBAND_PHOTO, (1280, 960), folder / "wristband.y4m"),
            "moving": write_y4m(CHART_PHOTO, (640, 480), folder / "moving.y4m", frames=30,
                                rate=30)}


@pytest.fixture(scope="package")
def browsers(cameras: dict[str, Path]) -> Iterator[Callable[[str], Any]]:
    """``browsers("chart")``: a headless Chromium whose camera shows that photo (one per kind).

    Package-scoped: Playwright's sync API owns this thread's event loop while it runs, so it
    must stop before other packages' browser tests start their own."""
    if not CHROMIUM.exists():
        pytest.skip("the e2e tests need Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    launched: dict[str, Any] = {}
    with sync_playwright() as playwright:

        def browser(kind: str) -> Any:
            if kind not in launched:
                launched[kind] = playwright.chromium.launch(
                    executable_path=str(CHROMIUM),
                    args=[*CHROMIUM_ARGS, "--disable-component-update",
                          "--use-fake-ui-for-media-stream",
                          "--use-fake-device-for-media-stream",
                          f"--use-file-for-fake-video-capture={cameras[kind]}"])
            return launched[kind]

        yield browser
        for b in launched.values():
            b.close()


@pytest.fixture
def page_for(browsers: Callable[[str], Any]) -> Iterator[Callable[[str, LiveApp], Any]]:
    """``page_for("chart", live)``: a new Pixel 7 context (:data:`PHONE`) and page on the app,
    errors and requested URLs recorded."""
    contexts = []

    def open_page(camera: str, live: LiveApp) -> Any:
        context = browsers(camera).new_context(**PHONE, base_url=live.url)
        context.set_default_timeout(20000)
        contexts.append(context)
        page = context.new_page()
        page.errors = []  # uncaught exceptions and CSP violations
        page.urls = []  # every URL the page asked for
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda message: page.errors.append(message.text)
                if "Content Security Policy" in message.text else None)
        page.on("request", lambda request: page.urls.append(request.url))
        page.goto("/")
        return page

    yield open_page
    for context in contexts:
        context.close()


class PhoneAudit:
    """A phone-size page (:data:`PHONE`, light or dark, the CSP bypassed so axe-core can be
    injected) whose :meth:`check` audits the screen shown and keeps a full-page screenshot
    ``phone-<prefix>-<name>-<scheme>.png``; :meth:`assert_clean` then fails on a page wider
    than the phone, a control under 44×44 px, a serious or critical axe finding or a page
    error."""

    def __init__(self, context: Any, axe_script: Path, scheme: str, prefix: str) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.found: dict[str, dict[str, Any]] = {}
        self._axe, self._scheme, self._prefix = axe_script, scheme, prefix
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def check(self, name: str) -> None:
        page = self.page
        page.add_script_tag(path=str(self._axe))
        self.found[name] = {"width": page.evaluate("() => document.documentElement.scrollWidth"),
                            "small": page.evaluate(TAP_TARGETS), "axe": page.evaluate(AXE_RUN)}
        page.screenshot(path=str(ARTIFACTS / f"phone-{self._prefix}-{name}-{self._scheme}.png"),
                        full_page=True)

    def assert_clean(self, *names: str) -> None:
        assert set(self.found) == set(names)
        for name, seen in self.found.items():
            assert seen["width"] <= PHONE["viewport"]["width"], (name, seen["width"])
            assert seen["small"] == [], (name, seen["small"])
            assert seen["axe"] == [], (name, seen["axe"])
        assert self.errors == []


@pytest.fixture
def phone_audit(live: LiveApp, browsers: Callable[[str], Any],
                axe_script: Path) -> Iterator[Callable[[str, str, str], PhoneAudit]]:
    """``phone_audit(camera, scheme, prefix)``: a :class:`PhoneAudit` on ``live`` with that
    fake camera; its context is closed at the end of the test."""
    contexts = []

    def open_audit(camera: str, scheme: str, prefix: str) -> PhoneAudit:
        context = browsers(camera).new_context(**PHONE, base_url=live.url, bypass_csp=True,
                                               color_scheme=scheme)
        context.set_default_timeout(30000)
        contexts.append(context)
        return PhoneAudit(context, axe_script, scheme, prefix)

    yield open_audit
    for context in contexts:
        context.close()
