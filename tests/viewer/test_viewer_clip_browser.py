"""A clip in the viewer, on a phone (a Pixel 7, 390×844) in Debian's Chromium under a
deployment's CSP: a real H.264 clip made in the test (tests/clips.py), uploaded with a photo,
plays in a <video> whose source answers 200 video/mp4 (the clip as recorded, and by byte
ranges), shows its first picture as the poster, steps one Frame Time back and forth by its
buttons and keys, offers no measuring tool, has tap targets of at least 44×44 px and no
serious axe-core finding. With a bearer token (an embedding app) the clip plays from an object
URL. Screenshot: tests/.artifacts/viewer-clip-390x844.png.
"""

from __future__ import annotations

import io
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from tests.clips import make_clip
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    served_as_deployed,
)
from tests.viewer.conftest import CHART, StoredStudy, photo, upload_study
from tests.viewer.test_viewer_browser import wait_until

FRAMES = 45  # make_clip's default, at 30 frames per second

VIDEO_STATE = """() => { const v = document.querySelector("#clip video");
  return { src: v.currentSrc, time: v.currentTime, ready: v.readyState, paused: v.paused,
           poster: v.getAttribute("poster"), error: v.error && v.error.code,
           canPlay: v.canPlayType('video/mp4; codecs="avc1.640028"'),
           frame: document.querySelector("#frame-number").textContent }; }"""

POSTER_SIZE = """async () => { const image = new Image();
  image.src = document.querySelector("#clip video").poster; await image.decode();
  return [image.naturalWidth, image.naturalHeight]; }"""

SHOWN = """() => [...document.querySelectorAll(
  "[data-tool], [data-zoom], #clear, #frames button, #stage-main")]
  .filter((el) => el.getClientRects().length > 0)
  .map((el) => el.id || el.dataset.tool || el.dataset.zoom || el.dataset.step)"""


def _clip_study(client: FlaskClient, auth: dict[str, dict[str, str]],
                tmp_path: Path) -> tuple[StoredStudy, bytes]:
    """A study of the chart photo and a 45-frame H.264 clip: the study and the clip's bytes."""
    clip = make_clip(tmp_path / "clip.mp4").read_bytes()
    return upload_study(client, auth["capture"], [photo(CHART), clip]), clip


def _first_frame(clip: Path) -> np.ndarray:
    with av.open(str(clip)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)


INTO_FRAME = 0.01  # static/js/viewer-clip.js: a step lands this many frames after a frame's start


def _seeked(page: Any, frame: int, step: float) -> None:
    """Wait until the clip has seeked to ``frame`` (frames ``step`` seconds apart)."""
    expected = (frame + INTO_FRAME) * step
    wait_until(page, "(() => { const v = document.querySelector('#clip video');"
                     f" return !v.seeking && Math.abs(v.currentTime - {expected}) < 2e-6; }})()")


def _login(browser: Any, url: str, username: str) -> dict[str, Any]:
    context = browser.new_context(**PHONE)
    assert context.request.post(f"{url}/login", data={
        "username": username, "password": PASSWORD}).ok
    state: dict[str, Any] = context.storage_state()
    context.close()
    return state


def _open_clip(page: Any, url: str, study: StoredStudy) -> None:
    page.goto(f"{url}/studies/{study.study_uid}")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    page.click(f".thumb[data-sop='{study.originals[1]}']")
    wait_until(page, "document.querySelector('#clip video').readyState === 4", timeout=30)


def test_a_clip_plays_with_its_poster_and_steps_frame_by_frame_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str], chromium: Browser, axe_script: Path, tmp_path: Path) -> None:
    errors: list[str] = []

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        state = _login(browser, url, users["view"])
        context = browser.new_context(**PHONE, storage_state=state)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        _open_clip(page, url, study)
        seen: dict[str, Any] = {"before": page.evaluate(VIDEO_STATE),
                                "poster_size": page.evaluate(POSTER_SIZE),
                                "shown": page.evaluate(SHOWN),
                                "calibration": page.text_content("#calibration")}
        source = seen["before"]["src"]
        whole = context.request.get(source)
        part = context.request.get(source, headers={"Range": "bytes=100-1099"})
        seen["whole"] = (whole.status, whole.headers["content-type"], whole.body())
        seen["part"] = (part.status, part.headers.get("content-range"), part.body())
        seen["poster_shot"] = page.locator("#clip video").screenshot()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "viewer-clip-390x844.png"))
        seen["small"] = page.evaluate(TAP_TARGETS)
        seen["width"] = page.evaluate("document.documentElement.scrollWidth")
        times = []
        for selector, expected in (("[data-step='1']", 1), ("[data-step='1']", 2),
                                   ("[data-step='-1']", 1)):
            page.click(selector)
            _seeked(page, expected, step)
            times.append(page.evaluate(VIDEO_STATE))
        page.focus("[data-step='1']")
        page.keyboard.press("Enter")  # the button, from the keyboard
        _seeked(page, 2, step)
        page.keyboard.press(".")  # and the shortcut
        _seeked(page, 3, step)
        times.append(page.evaluate(VIDEO_STATE))
        seen["times"] = times
        seen["stepped_shot"] = page.locator("#clip video").screenshot()
        page.click(f".thumb[data-sop='{study.originals[0]}']")  # back to the photo
        wait_until(page, "document.querySelector('#stage-main .image').naturalWidth > 0")
        seen["photo_shown"] = page.evaluate(SHOWN)
        context.close()

        context = browser.new_context(**PHONE, storage_state=state, bypass_csp=True)
        page = context.new_page()
        _open_clip(page, url, study)
        page.add_script_tag(path=str(axe_script))
        seen["axe"] = page.evaluate(AXE_RUN)
        context.close()

        context = browser.new_context(**PHONE)  # an embedding app's bearer token, no cookie
        page = context.new_page()
        token = auth["view"]["Authorization"].removeprefix("Bearer ")
        page.add_init_script(f"sessionStorage.setItem('ebiw.token', {token!r})")
        _open_clip(page, url, study)
        seen["token"] = page.evaluate(VIDEO_STATE)
        context.close()
        return seen

    with served_as_deployed(app) as (url, _):
        study, clip = _clip_study(client, auth, tmp_path)
        metadata = next(ds for ds in client.get(f"/dicomweb/studies/{study.study_uid}/metadata",
                                                headers=auth["view"]).get_json()
                        if ds["00080018"]["Value"] == [study.originals[1]])
        step = float(metadata["00181063"]["Value"][0]) / 1000  # Frame Time, ms
        seen = chromium.run(lambda browser: scenario(browser, url))

    before = seen["before"]
    assert errors == []
    assert before["canPlay"] == "probably"  # Debian's chromium decodes H.264
    assert before["error"] is None and before["paused"] and before["time"] == 0
    assert before["src"].endswith(
        f"/instances/{study.originals[1]}/rendered?accept=video/mp4")
    assert seen["whole"] == (200, "video/mp4", clip)  # the clip as recorded
    assert seen["part"] == (206, f"bytes 100-1099/{len(clip)}", clip[100:1100])
    assert before["poster"].startswith("blob:") and seen["poster_size"][0] > 0
    # the poster (the clip's first picture) fills the player: its centre is that picture
    first = _first_frame(tmp_path / "clip.mp4")
    shot = np.asarray(Image.open(io.BytesIO(seen["poster_shot"])).convert("RGB"), dtype=float)
    height, width = shot.shape[:2]
    inner = shot[height // 2 - 40:height // 2 + 40, width // 2 - 60:width // 2 + 60]
    shown = np.asarray(Image.fromarray(first.astype(np.uint8)).resize(
        (width, round(width * 240 / 320))), dtype=float)
    top = (height - shown.shape[0]) // 2
    expected = shown[height // 2 - top - 40:height // 2 - top + 40,
                     width // 2 - 60:width // 2 + 60]
    assert np.abs(inner - expected).mean() < 12, np.abs(inner - expected).mean()
    assert before["frame"] == f"Frame 1 of {FRAMES}"
    assert abs(step - 1 / 30) < 1e-6
    # each step moves by one frame time (the media clock counts microseconds)
    times = [before["time"], *(t["time"] for t in seen["times"])]
    assert [round(b - a, 6) for a, b in pairwise(times[1:])] == [
        round(step, 6), round(-step, 6), round(2 * step, 6)]
    assert [round(t / step, 3) for t in times] == [0, 1.01, 2.01, 1.01, 3.01]
    assert [t["frame"] for t in seen["times"]] == [
        f"Frame {n} of {FRAMES}" for n in (2, 3, 2, 4)]
    assert all(t["paused"] for t in seen["times"])
    stepped = np.asarray(Image.open(io.BytesIO(seen["stepped_shot"])).convert("RGB"), float)
    assert np.abs(stepped - shot).mean() > 1  # another picture: the clip pans
    assert seen["shown"] == ["-1", "1"]  # no measuring tool, no zoom, no photo stage
    assert "not measured" in seen["calibration"]
    assert "1" not in seen["photo_shown"] and "length" in seen["photo_shown"]
    assert "stage-main" in seen["photo_shown"]
    assert seen["small"] == [] and seen["width"] <= 390
    assert seen["axe"] == []
    token = seen["token"]
    assert token["src"].startswith("blob:") and token["error"] is None and token["ready"] >= 2
