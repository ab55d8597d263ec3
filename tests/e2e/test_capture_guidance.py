"""The camera screen's aids in a real browser under the deployment's CSP: live guidance from
POST /api/v1/guidance for a sharp chart, a blurred chart and a scene without one; the app's
manners towards the server (Retry-After, back-off, offline, one request at a time, the shutter
never waiting); camera controls shown only where the track has them; the burst; "Retake?" on
the review screen; the full-screen view with zoom."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from sqlalchemy import select

from app.db.models import Photo
from tests.conftest import services
from tests.e2e.conftest import ARTIFACTS, LiveApp
from tests.e2e.test_capture_app import (
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)

GUIDANCE = "**/api/v1/guidance*"


def open_camera(page: Any) -> None:
    """Log in, identify the demo patient and reach the camera screen with a picture."""
    log_in(page)
    page.click("#start")
    identify_typed(page, "00123456")
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "L")
    page.click("#details-form button[type=submit]")
    screen(page, "camera")
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")


def states(page: Any) -> dict[str, str]:
    """The guidance row as shown: check id → ok / warn / unknown."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '#guidance [data-check]')].map((e) => [e.dataset.check, e.dataset.state]))""")


def wait_for_guidance(page: Any) -> dict[str, str]:
    page.wait_for_selector("#guidance [data-check=glare]", timeout=20000)
    return states(page)


def guidance_requests(page: Any) -> list[float]:
    """When (monotonic seconds) each guidance request left the page, from now on."""
    times: list[float] = []
    page.on("request", lambda r: times.append(time.monotonic())
            if "/api/v1/guidance" in r.url else None)
    return times


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def test_a_sharp_chart_is_found_and_sharp(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    seen: list[dict[str, Any]] = []
    page.on("response", lambda r: seen.append({"status": r.status, "type": r.request.headers.get(
        "content-type"), "url": r.url}) if "/api/v1/guidance" in r.url else None)
    open_camera(page)
    shown = wait_for_guidance(page)
    assert list(shown) == ["chart", "distance", "tilt", "sharpness", "exposure", "glare"]
    assert shown["chart"] == "ok" and shown["sharpness"] == "ok", shown
    label = page.get_attribute("#guidance [data-check=chart]", "aria-label")
    assert label and label.startswith("Colour chart: "), label
    assert page.text_content("[data-guidance-advice]")
    page.evaluate("""() => {  // count what a screen reader would hear from the advice line
      window.adviceChanges = 0;
      new MutationObserver(() => { window.adviceChanges += 1; }).observe(
        document.querySelector('[data-guidance-advice]'),
        { childList: true, characterData: true, subtree: true });
    }""")
    times = guidance_requests(page)
    page.wait_for_timeout(3500)
    assert len(times) >= 2  # answers keep coming …
    assert page.evaluate("() => window.adviceChanges") == 0  # … the same advice is not re-said
    assert page.evaluate("() => document.querySelector('#guidance').hidden") is False
    assert seen and seen[0]["status"] == 200 and seen[0]["type"] == "image/jpeg"
    assert "photo_width=4000" in seen[0]["url"]  # the track's width: px/mm at photo scale
    page.screenshot(path=str(ARTIFACTS / "guidance-chart-390x844.png"))
    shoot(page, 1)
    assert "kept the sharpest of 3" in page.text_content("#camera-status")
    page.click("#camera-done")
    screen(page, "review")
    assert page.locator(".retake").count() == 0
    assert page.evaluate("() => document.querySelector('#guidance').hidden") is True
    assert page.errors == []


def test_a_blurred_chart_is_blurry_and_the_review_asks_for_a_retake(
        live: LiveApp, page_for: Any) -> None:
    page = page_for("chart-blurred", live)
    open_camera(page)
    page.wait_for_selector("#guidance [data-check=sharpness][data-state=warn]", timeout=20000)
    label = page.get_attribute("#guidance [data-check=sharpness]", "aria-label")
    assert label and label.startswith("Sharpness: ") and "blur" in label.lower(), label
    page.screenshot(path=str(ARTIFACTS / "guidance-blurred-390x844.png"))
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    prompts = page.locator(".retake")
    assert prompts.count() == 2
    assert prompts.first.text_content().startswith("Retake? Blurry")
    page.screenshot(path=str(ARTIFACTS / "review-retake-390x844.png"), full_page=True)
    page.locator("[data-retake]").first.click()  # drops that photo, back to the camera
    screen(page, "camera")
    assert page.locator("#shots canvas").count() == 1
    page.click("#camera-done")
    screen(page, "review")
    page.click("[data-keep]")
    assert page.locator(".retake").count() == 0
    assert page.locator("#review-list li").count() == 1
    send_and_wait(page)  # the server's quality record replaces the app's verdict
    verdict = page.text_content("#review-list .quality")
    assert verdict and verdict.startswith("Quality: ") and "Blurry" in verdict, verdict
    with services(live.flask).db.session() as db:
        quality = db.scalars(select(Photo.quality)).one()
    sharpness = next(c for c in quality["checks"] if c["id"] == "sharpness")
    assert sharpness["ok"] is False, quality
    assert page.errors == []


def test_a_scene_without_a_chart_says_so(live: LiveApp, page_for: Any) -> None:
    page = page_for("no-chart", live)
    open_camera(page)
    page.wait_for_selector("#guidance [data-check=chart][data-state=warn]", timeout=20000)
    shown = states(page)
    assert shown["distance"] == "unknown" and shown["tilt"] == "unknown", shown
    assert "chart" in page.text_content("[data-guidance-advice]").lower()
    assert page.errors == []


def refusing(status: int) -> Any:
    """A route handler answering every guidance request with ``status`` (Retry-After: 3)."""

    def refuse(route: Any) -> None:
        route.fulfill(status=status, headers={"Retry-After": "3"},
                      content_type="application/json",
                      body=json.dumps({"error": {"code": "refused", "message": "not now"}}))

    return refuse


def test_a_429_makes_the_app_wait_retry_after(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    page.route(GUIDANCE, refusing(429))
    times = guidance_requests(page)
    open_camera(page)
    page.wait_for_timeout(8000)
    assert len(times) >= 3, gaps(times)
    assert all(2.8 <= gap <= 4 for gap in gaps(times)), gaps(times)  # Retry-After: 3
    assert page.locator("#guidance [data-check]").count() == 0
    assert page.errors == []


def test_errors_back_off_doubling_the_interval(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    page.route(GUIDANCE, refusing(500))  # Retry-After means nothing here: 1 s → 2, 4, 8 …
    times = guidance_requests(page)
    open_camera(page)
    page.wait_for_timeout(7500)
    assert len(times) == 3, gaps(times)
    first, second = gaps(times)
    assert 1.8 <= first <= 2.6 and 3.8 <= second <= 4.6, gaps(times)
    assert page.errors == []


def test_offline_stops_guidance_and_online_resumes_it(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    open_camera(page)
    wait_for_guidance(page)
    times = guidance_requests(page)
    page.context.set_offline(True)
    page.wait_for_timeout(300)
    before = len(times)
    page.wait_for_timeout(3000)
    assert len(times) == before <= 1, gaps(times)
    assert page.text_content("[data-guidance-advice]") == "Guidance unavailable offline"
    assert page.locator("#guidance [data-check]").count() == 0
    page.context.set_offline(False)
    page.wait_for_selector("#guidance [data-check=glare]", timeout=10000)
    assert len(times) > before


HIDE = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW = """() => {
  delete document.hidden;
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_a_hidden_page_sends_nothing(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    open_camera(page)
    wait_for_guidance(page)
    times = guidance_requests(page)
    page.evaluate(HIDE)
    page.wait_for_timeout(1500)  # an answer on its way may land; nothing leaves after it
    before = len(times)
    page.wait_for_timeout(3000)
    assert len(times) == before <= 1, gaps(times)
    page.evaluate(SHOW)
    page.wait_for_timeout(2500)
    assert len(times) > before


def test_the_shutter_works_while_a_guidance_request_hangs(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    held: list[float] = []
    page.route(GUIDANCE, lambda route: held.append(time.monotonic()))  # never answered
    open_camera(page)
    page.wait_for_timeout(1500)
    shoot(page, 2)
    assert page.locator("#shots canvas").count() == 2
    # one request in flight at most: none other until the hung one times out (5 s) …
    while time.monotonic() - held[0] < 4.5:
        page.wait_for_timeout(250)
    assert len(held) == 1
    # … then guidance goes on (after the back-off), not stopped for good
    page.wait_for_timeout(4500)
    assert len(held) >= 2, held
    page.unroute(GUIDANCE)


CONTROLS = """async () => {
  const { controlsOf } = await import("/static/js/camera-controls.js");
  const track = document.querySelector("#camera-video").srcObject.getVideoTracks()[0];
  const caps = track.getCapabilities();
  const supported = navigator.mediaDevices.getSupportedConstraints();
  const shown = (id) => !document.getElementById(id).hidden;
  return {
    expected: controlsOf(caps, supported),
    caps: Object.keys(caps),
    shown: { torch: shown("torch"), zoom: shown("zoom-box"),
             focus: document.querySelector("#camera-video").classList.contains("tap-focus") },
    stubbed: [
      controlsOf({}, {}),
      controlsOf({ torch: true, zoom: { min: 1, max: 5, step: 0.1 },
                   focusMode: ["manual", "single-shot", "continuous"],
                   exposureMode: ["continuous"] }, { pointsOfInterest: true }),
      controlsOf({ zoom: { min: 1, max: 1, step: 0 }, focusMode: ["single-shot"] }, {}),
      controlsOf({ torch: [false, true], focusMode: ["manual"] }, { pointsOfInterest: true }),
    ],
  };
}"""


def test_camera_controls_show_what_the_track_offers(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    open_camera(page)
    page.wait_for_function("() => document.querySelector('#camera-video').srcObject")
    found = page.evaluate(CONTROLS)
    expected = found["expected"]
    assert found["shown"] == {"torch": expected["torch"], "zoom": expected["zoom"] is not None,
                              "focus": expected["focus"] is not None}, found
    none, everything, fixed_zoom, manual_only = found["stubbed"]
    assert none == {"torch": False, "zoom": None, "focus": None}
    assert everything == {"torch": True, "zoom": {"min": 1, "max": 5, "step": 0.1},
                          "focus": {"focusMode": "single-shot", "exposureMode": "continuous"}}
    assert fixed_zoom == {"torch": False, "zoom": None, "focus": None}  # no pointsOfInterest
    assert manual_only == {"torch": True, "zoom": None, "focus": None}
    if expected["zoom"]:  # this Chromium's fake camera zooms: the slider applies it
        page.fill("#zoom", str(expected["zoom"]["max"]))
        page.wait_for_function("""(z) => document.querySelector('#camera-video').srcObject
            .getVideoTracks()[0].getSettings().zoom === z""", arg=expected["zoom"]["max"])


STUB_TRACK = """() => {  // a camera with every control: capabilities stubbed, constraints recorded
  window.applied = [];
  const proto = MediaStreamTrack.prototype;
  const real = proto.getCapabilities;
  proto.getCapabilities = function () {
    return { ...real.call(this), torch: true, zoom: { min: 1, max: 4, step: 0.5 },
             focusMode: ["manual", "single-shot", "continuous"], exposureMode: ["continuous"] };
  };
  proto.getSettings = function () { return { zoom: 1, torch: false }; };
  proto.applyConstraints = async function (c) { window.applied.push(c); };
}"""


def test_controls_apply_torch_zoom_and_tap_to_focus(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    page.route(GUIDANCE, lambda route: route.abort())
    page.evaluate(STUB_TRACK)
    open_camera(page)
    page.wait_for_selector("#torch:not([hidden])")
    page.wait_for_selector("#zoom-box:not([hidden])")
    assert page.get_attribute("#zoom", "max") == "4"
    page.click("#torch")
    page.wait_for_selector("#torch[aria-pressed=true]")
    page.fill("#zoom", "2.5")
    box = page.locator("#camera-video").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    page.wait_for_selector("#focus-mark:not([hidden])")
    page.wait_for_function("() => window.applied.length === 3")
    torch, zoom, focus = [c["advanced"][0] for c in page.evaluate("() => window.applied")]
    assert torch == {"torch": True} and zoom == {"zoom": 2.5}
    (point,) = focus.pop("pointsOfInterest")
    assert focus == {"focusMode": "single-shot", "exposureMode": "continuous"}
    # the 4:3 picture fills the 4:3 viewfinder: the tap's place is the point of interest
    assert abs(point["x"] - 0.25) < 0.02 and abs(point["y"] - 0.75) < 0.02, point
    shoot(page, 1)
    page.click("#camera-done")  # on to the review: the camera stops, the controls go
    page.wait_for_selector("#torch[hidden]", state="attached")
    assert page.errors == []


SCALE = "() => Number(document.querySelector('#photo-view').dataset.scale)"
OPEN = "() => document.querySelector('#photo-view').open"


def test_full_screen_review_zooms_pans_and_closes(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    page.route(GUIDANCE, lambda route: route.abort())  # not what this test is about
    open_camera(page)
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    page.click("[data-view]")
    page.wait_for_function(OPEN)
    assert page.evaluate(SCALE) == 1
    size = page.evaluate("""() => { const c = document.querySelector('#photo-view canvas');
        return [c.width, c.height]; }""")
    assert size == [4000, 3000]  # the photo itself, not its thumbnail
    page.click("[data-zoom-in]")
    assert page.evaluate(SCALE) == 1.5
    page.click("[data-zoom-out]")
    assert page.evaluate(SCALE) == 1
    box = page.locator("[data-stage]").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.dblclick(cx, cy)
    assert page.evaluate(SCALE) == 2.5
    before = page.get_attribute("#photo-view canvas", "style")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 20, steps=5)
    page.mouse.up()
    assert page.get_attribute("#photo-view canvas", "style") != before  # panned
    page.mouse.dblclick(cx, cy)
    assert page.evaluate(SCALE) == 1
    cdp = page.context.new_cdp_session(page)  # a two-finger pinch, as a touch screen sends it
    x, y = int(cx), int(cy)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [
        {"x": x - 30, "y": y, "id": 0}, {"x": x + 30, "y": y, "id": 1}]})
    for spread in range(40, 130, 10):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
            {"x": x - spread, "y": y, "id": 0}, {"x": x + spread, "y": y, "id": 1}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert 3 <= page.evaluate(SCALE) <= 5  # fingers 60 → 240 px apart: about 4×
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('#photo-view').open")
    assert page.evaluate("() => document.querySelector('#photo-view canvas').width") == 0
    page.click("[data-view]")
    page.wait_for_function(OPEN)
    page.click("[data-close]")
    page.wait_for_function("() => !document.querySelector('#photo-view').open")
    assert page.errors == []
