"""Measuring in the viewer at phone size (390×844, touch): a length, a width snapped across
it and a traced polygon, saved (the values then shown are the server's, with their
uncertainty), drawn back after a reload from the stored SR's index; the assisted outline from
one tap; labels at the photo's top edge readable (not under the toolbar); axe-core clean and
every control at least 44 px. Screenshots in tests/.artifacts/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import Instance, WoundMeasurement
from app.pipeline.geometry import FAR_FROM_CHART, WARNINGS
from tests.conftest import ARTIFACTS, AXE_RUN, PHONE, TAP_TARGETS, WOUNDS, Browser, services
from tests.viewer.conftest import photo, viewing

CHART_PHOTO = "jtvd_classic_02.jpg"  # a tilted Classic chart, 1530 x 2040
SIZE = (1530, 2040)
LENGTH = [(200, 300), (1300, 1800)]
WIDTH_FROM, WIDTH_TOWARDS = (1000, 800), (500, 1200)
SQUARE = [(300, 400), (900, 420), (880, 1000), (320, 980)]


def innermost(label: Path) -> tuple[int, int]:
    """The innermost point of the largest wound of an expert mask (where a nurse would tap)."""
    mask = (cv2.imread(str(label), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))
    distance = cv2.distanceTransform((labels == largest).astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def screen(page: Any, point: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    box = page.locator("#stage-main .image").bounding_box()
    return (box["x"] + point[0] / size[0] * box["width"],
            box["y"] + point[1] / size[1] * box["height"])


def listed(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#measurements li", "items => items.map(i => ({...i.dataset, text: i.textContent}))")


def drag(page: Any, a: tuple[float, float], b: tuple[float, float]) -> None:
    page.mouse.move(*screen(page, a, SIZE))
    page.mouse.down()
    page.mouse.move(*screen(page, b, SIZE), steps=8)
    page.mouse.up()


def audit(page: Any, axe: Path) -> dict[str, Any]:
    page.add_script_tag(path=str(axe))
    return {"small": page.evaluate(TAP_TARGETS), "axe": page.evaluate(AXE_RUN),
            "width": page.evaluate("document.documentElement.scrollWidth")}


def test_measure_save_reload_and_outline_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser, axe_script: Path) -> None:
    wound = sorted((WOUNDS / "images").iterdir())[0]
    seed = innermost(WOUNDS / "labels" / wound.name)
    # sent as a phone sends it, a JPEG (a PNG instance's thumbnail answers 406: not ours here)
    as_jpeg = cv2.imencode(".jpg", cv2.imread(str(wound)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO), as_jpeg.tobytes()])
    study = viewer.study

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        out: dict[str, Any] = {}
        page.tap("[data-tool=length]")
        drag(page, *LENGTH)
        page.tap("[data-tool=width]")
        drag(page, WIDTH_FROM, WIDTH_TOWARDS)
        page.tap("[data-tool=area]")
        for corner in [*SQUARE, SQUARE[0]]:
            page.touchscreen.tap(*screen(page, corner, SIZE))
        out["drawn"] = listed(page)
        out["ellipse"] = page.text_content("#ellipse")
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-drawn-390x844.png"))
        page.fill("#wound", "Heel ulcer")
        page.tap("#save")
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 3")
        out["status"] = page.text_content("#measure-status")
        out["saved"] = listed(page)
        out["audit"] = audit(page, axe_script)
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-saved-390x844.png"), full_page=True)

        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 3")
        out["reloaded"] = listed(page)
        out["shapes"] = page.eval_on_selector_all(
            "#stage-main .overlay g.m-saved", "gs => gs.map(g => g.getAttribute('class'))")
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-reloaded-390x844.png"))
        page.once("dialog", lambda dialog: dialog.accept())
        page.tap("#measurements li[data-saved] button.delete")
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 0")
        out["withdrawn"] = page.text_content("#measure-status")

        page.tap(f".thumb[data-sop='{study.originals[1]}']")
        wait_until(page, "document.querySelector('#stage-main .image').naturalWidth > 0 && "
                         "document.querySelectorAll('#measurements li').length === 0")
        page.wait_for_timeout(300)
        page.tap("[data-tool=outline]")
        page.touchscreen.tap(*screen(page, seed, (512, 512)))
        wait_until(page, "document.querySelectorAll('#measurements li[data-kind=area]')"
                         ".length === 1")
        out["outline"] = page.eval_on_selector(
            "#stage-main .overlay .m-area polygon",
            "p => [...p.points].map(q => [q.x, q.y])")
        out["outline_status"] = page.text_content("#measure-status")
        out["outline_audit"] = audit(page, axe_script)
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-outline-390x844.png"))
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    assert [m["kind"] for m in seen["drawn"]] == ["length", "width", "area"]
    assert all(m.get("saved") is None for m in seen["drawn"])
    assert seen["ellipse"].startswith("L×W ellipse (π/4·L·W): ")

    with services(app).db.session() as db:
        rows = db.scalars(select(WoundMeasurement).order_by(
            WoundMeasurement.region, WoundMeasurement.quantity)).all()
    assert [(r.region, r.quantity) for r in rows] == [
        (1, "length"), (2, "width"), (3, "area"), (3, "perimeter")]
    assert {r.wound_label for r in rows} == {"Heel ulcer"}
    # The width was snapped perpendicular to the length.
    (a, b), (c, d) = np.array(rows[0].points), np.array(rows[1].points)
    cosine = abs(np.dot(b - a, d - c)) / (np.linalg.norm(b - a) * np.linalg.norm(d - c))
    assert cosine < 1e-3
    assert np.allclose(c, WIDTH_FROM, atol=25)  # where the drag started (touch precision)
    # The values listed are the server's (from the SR's index), with their uncertainty.
    for items in (seen["saved"], seen["reloaded"]):
        assert [m["kind"] for m in items] == ["length", "width", "area"]
        assert [float(m["value"]) for m in items] == [rows[0].value, rows[1].value,
                                                      rows[2].value]
        assert all(" ± " in m["text"] and "Heel ulcer" in m["text"] for m in items)
        assert [m["unit"] for m in items] == ["mm", "mm", "mm2"]
    assert seen["status"].startswith("Saved as a DICOM report")
    assert seen["withdrawn"].startswith("Withdrawn")  # the whole report, all three regions
    with services(app).db.session() as db:
        report = db.get(Instance, rows[0].report_sop_uid)
        assert report is not None and report.rejection_code == "113001"
    assert seen["shapes"] == ["m-length m-saved", "m-width m-saved", "m-area m-saved"]
    for found in (seen["audit"], seen["outline_audit"]):
        assert found["axe"] == [] and found["small"] == []
        assert found["width"] <= PHONE["viewport"]["width"]

    polygon = np.array(seen["outline"])
    assert len(polygon) >= 3 and seen["outline_status"].startswith("Outline proposed")
    inside = cv2.pointPolygonTest(polygon.astype(np.float32).reshape(-1, 1, 2),
                                  (float(seed[0]), float(seed[1])), False)
    assert inside >= 0  # the proposed outline holds the tap


def test_shapes_are_edited_by_their_handles_and_deleted_on_a_desktop(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser) -> None:
    """A length's end dragged to a new place is saved there; an arrow is deleted from the
    list; a note stays on the page only (arrows and notes are never sent)."""
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO)])
    moved = (1200, 1700)

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, {"viewport": {"width": 1280, "height": 800}})
        page.click("[data-tool=length]")
        drag(page, *LENGTH)
        page.click("[data-tool=pan]")
        drag(page, LENGTH[1], moved)  # the end's handle, not a pan
        page.click("[data-tool=arrow]")
        drag(page, (600, 1500), (800, 1300))
        page.fill("#note-text", "slough at 3 o'clock")
        page.click("[data-tool=note]")
        page.mouse.click(*screen(page, (700, 600), SIZE))
        out: dict[str, Any] = {"before": listed(page)}
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-edit-1280x800.png"))
        page.click("[aria-label='Delete Arrow 1']")
        out["after_delete"] = listed(page)
        page.click("#save")
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 1")
        out["saved"] = listed(page)
        page.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    assert [m["kind"] for m in seen["before"]] == ["length", "arrow", "note"]
    assert seen["before"][2]["text"].endswith("Note 1: slough at 3 o'clock")
    assert [m["kind"] for m in seen["after_delete"]] == ["length", "note"]
    assert [(m["kind"], m.get("saved")) for m in seen["saved"]] == [("length", "true"),
                                                                    ("note", None)]
    with services(app).db.session() as db:
        (row,) = db.scalars(select(WoundMeasurement)).all()
    assert row.quantity == "length"
    assert np.allclose(row.points, [LENGTH[0], moved], atol=8)


def test_clear_can_be_undone_until_something_is_drawn_again_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser, axe_script: Path) -> None:
    """Clear removes the unsaved drawings and turns into "Undo clear", which puts them back
    (a stray tap next to the photo must not lose a tracing); once something is drawn again
    the removed ones are gone for good and Clear clears only the new one. Nothing is saved."""
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO)])

    def state(page: Any) -> dict[str, Any]:
        return {"kinds": [m["kind"] for m in listed(page)],
                "button": page.text_content("#clear"),
                "status": page.eval_on_selector(
                    "#measure-status", "s => s.hidden ? null : s.textContent")}

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        page.tap("[data-tool=length]")
        drag(page, *LENGTH)
        page.tap("[data-tool=width]")
        drag(page, WIDTH_FROM, WIDTH_TOWARDS)
        out: dict[str, Any] = {"drawn": state(page)}
        page.tap("#clear")
        out["cleared"] = state(page)
        out["audit"] = audit(page, axe_script)
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-undo-clear-390x844.png"))
        page.tap("#clear")
        out["undone"] = state(page)
        page.tap("#clear")
        page.tap("[data-tool=length]")
        drag(page, *LENGTH)
        out["drawn_again"] = state(page)
        page.tap("#clear")
        out["cleared_again"] = state(page)
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    assert seen["drawn"] == {"kinds": ["length", "width"], "button": "Clear", "status": None}
    assert seen["cleared"] == {"kinds": [], "button": "Undo clear", "status":
                               "Removed 2 unsaved drawings. Tap “Undo clear” to put them back."}
    assert seen["audit"]["axe"] == [] and seen["audit"]["small"] == []
    assert seen["audit"]["width"] <= PHONE["viewport"]["width"]
    assert seen["undone"] == {"kinds": ["length", "width"], "button": "Clear",
                              "status": "Drawings put back."}
    assert seen["drawn_again"] == {"kinds": ["length"], "button": "Clear", "status": None}
    assert seen["cleared_again"]["kinds"] == []
    assert seen["cleared_again"]["status"] == (
        "Removed 1 unsaved drawing. Tap “Undo clear” to put it back.")
    with services(app).db.session() as db:
        assert db.scalars(select(WoundMeasurement)).all() == []


WARNED_PHOTO = "jtvd_mini_01.jpg"  # a Mini chart in the middle of a 1530 x 2040 photo
FAR_LENGTH = [(80, 70), (680, 70)]  # along the top: more than 2 chart diagonals away


def test_a_saved_measurement_s_warning_is_still_shown_after_a_reload_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser, axe_script: Path) -> None:
    """A length drawn far from the chart is saved with the server's warning; after a reload
    (drawn back from the SR's index) its list item still says the warning, readable at
    390 px, axe-clean, every control at least 44 px, and its label on the image is marked."""
    viewer = viewing(client, auth, live_server, [photo(WARNED_PHOTO)])

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        page.tap("[data-tool=length]")
        drag(page, *FAR_LENGTH)
        page.tap("#save")
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 1")
        out: dict[str, Any] = {"status": page.text_content("#measure-status")}
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 1")
        out["reloaded"] = listed(page)
        out["warning"] = page.eval_on_selector(
            "#measurements li[data-saved] .measure-warning", """w => {
              const box = w.getBoundingClientRect();
              return {text: w.innerText, left: box.left, right: box.right,
                      color: getComputedStyle(w).color, font: getComputedStyle(w).fontSize};
            }""")
        out["label"] = page.text_content("#stage-main .overlay g.m-saved text")
        page.locator("#measurements").scroll_into_view_if_needed()
        out["audit"] = audit(page, axe_script)
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-warning-reloaded-390x844.png"),
                        full_page=True)
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    message = WARNINGS[FAR_FROM_CHART]
    assert message in seen["status"]  # said when saving, as before
    [item] = seen["reloaded"]
    assert item["warnings"] == FAR_FROM_CHART and f"Warning: {message}" in item["text"]
    assert seen["warning"]["text"] == f"Warning: {message}"
    assert 0 <= seen["warning"]["left"] < seen["warning"]["right"] <= PHONE["viewport"]["width"]
    assert float(seen["warning"]["font"].removesuffix("px")) >= 14
    assert seen["label"].endswith("⚠")
    assert seen["audit"]["axe"] == [] and seen["audit"]["small"] == []
    assert seen["audit"]["width"] <= PHONE["viewport"]["width"]
    with services(app).db.session() as db:
        (row,) = db.scalars(select(WoundMeasurement)).all()
    assert row.warnings == [FAR_FROM_CHART]


TOP_NOTE = (1200, 5)  # a note's point on the photo's top edge, right of FAR_LENGTH's label
LABEL_BOXES = """() => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
  };
  const image = box(document.querySelector("#stage-main .image"));
  const stage = box(document.querySelector("#stage-main"));
  return {
    toolbar: box(document.querySelector(".viewer .toolbar")),
    chip: box(document.querySelector("#stage-main .stage-label")),
    visible: {left: Math.max(image.left, stage.left), top: Math.max(image.top, stage.top),
              right: Math.min(image.right, stage.right),
              bottom: Math.min(image.bottom, stage.bottom)},
    labels: [...document.querySelectorAll("#stage-main .overlay text")]
      .map((t) => ({text: t.textContent, ...box(t), shape: box(t.parentNode.firstElementChild)})),
  };
}"""


def test_labels_at_the_photo_s_top_edge_stay_readable_on_a_phone(
        client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser, axe_script: Path) -> None:
    """A length drawn along the photo's top edge has its label below the line, and a note
    on that edge has its label moved down: both wholly inside the visible part of the image
    and the viewport, none under the toolbar or the stage's date chip; axe-clean, every
    control at least 44 px."""
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO)])

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        page.fill("#note-text", "slough")
        page.evaluate("window.scrollTo(0, 0)")  # back from the note's text field
        page.tap("[data-tool=length]")
        drag(page, *FAR_LENGTH)
        page.tap("[data-tool=note]")
        # a click: a tap this close to the toolbar is taken by Chromium's touch adjustment
        # for the Clear button above it
        page.mouse.click(*screen(page, TOP_NOTE, SIZE))
        out: dict[str, Any] = {"boxes": page.evaluate(LABEL_BOXES),
                               "line_y": screen(page, FAR_LENGTH[0], SIZE)[1]}
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-top-labels-390x844.png"))
        out["audit"] = audit(page, axe_script)
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    boxes = seen["boxes"]
    toolbar, visible, chip = boxes["toolbar"], boxes["visible"], boxes["chip"]
    assert [label["text"].split(" ")[0] for label in boxes["labels"]] == ["L1", "slough"]
    for label in boxes["labels"]:
        assert label["top"] >= toolbar["bottom"], label  # not under the toolbar
        assert visible["left"] <= label["left"] < label["right"] <= visible["right"], label
        assert visible["top"] <= label["top"] < label["bottom"] <= visible["bottom"], label
        assert 0 <= label["left"] < label["right"] <= PHONE["viewport"]["width"], label
        assert 0 <= label["top"] < label["bottom"] <= PHONE["viewport"]["height"], label
        assert label["top"] >= chip["bottom"] or label["left"] >= chip["right"], label
    assert boxes["labels"][0]["top"] > seen["line_y"]  # put below its line
    assert seen["audit"]["axe"] == [] and seen["audit"]["small"] == []
    assert seen["audit"]["width"] <= PHONE["viewport"]["width"]


def test_unsaved_drawings_follow_their_photo_and_leaving_asks_first_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser) -> None:
    """A length drawn and not saved is kept when another photo is chosen and is back, at the
    same place, when its photo is chosen again; leaving the page with it unsaved asks first
    (beforeunload), leaving with only an arrow (never saved) does not."""
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO), photo(WARNED_PHOTO)])
    study = viewer.study

    def leave(page: Any) -> list[str]:
        """The dialogs shown while ``page`` is closed as a user leaving it would."""
        asked: list[str] = []
        page.on("dialog", lambda d: (asked.append(d.type), d.accept()))
        page.close(run_before_unload=True)
        page.wait_for_event("close")
        return asked

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        page.tap("[data-tool=length]")
        drag(page, *LENGTH)
        out: dict[str, Any] = {"drawn": listed(page)}
        page.tap(f".thumb[data-sop='{study.originals[1]}']")
        wait_until(page, "document.querySelectorAll('#measurements li').length === 0")
        out["other"] = listed(page)
        page.tap(f".thumb[data-sop='{study.originals[0]}']")
        wait_until(page, "document.querySelectorAll('#measurements li').length === 1")
        out["back"] = listed(page)
        page.tap(f".thumb[data-sop='{study.originals[1]}']")
        out["asked"] = leave(page)
        page = viewer.open(browser, PHONE)
        page.tap("[data-tool=arrow]")
        drag(page, *LENGTH)
        out["arrow_only"] = leave(page)
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    assert [m["kind"] for m in seen["drawn"]] == ["length"]
    assert seen["other"] == []
    assert seen["back"] == seen["drawn"]  # the same length, value and label
    assert seen["asked"] == ["beforeunload"]
    assert seen["arrow_only"] == []
    with services(app).db.session() as db:
        assert db.scalars(select(WoundMeasurement)).all() == []


PARALLEL = [[(300, 1000), (1200, 1000)], [(450, 1030), (1050, 1030)]]  # ~8 screen px apart
ACROSS = [(750, 1000), (750, 760)]  # a width from the first length's middle, up to an edge
CLOSE_TO_SHAPE_PX = 40


def gap_between(a: dict[str, float], b: dict[str, float]) -> float:
    """The distance between two client rects (0 when they touch or overlap)."""
    return float(np.hypot(max(0.0, a["left"] - b["right"], b["left"] - a["right"]),
                          max(0.0, a["top"] - b["bottom"], b["top"] - a["bottom"])))


def test_labels_of_nearby_measurements_do_not_overlap_on_a_phone(
        client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser) -> None:
    """Two parallel lengths a few pixels apart and a width from the middle of the first, whose
    labels would lie on one another at their usual places (above a length's middle, below a
    width's): no two labels intersect, each lies inside the visible part of the photo, below
    the toolbar and near its own line; the same once saved and drawn back from the SR's index
    after a reload."""
    viewer = viewing(client, auth, live_server, [photo(CHART_PHOTO)])

    def scenario(browser: Any) -> dict[str, Any]:
        page = viewer.open(browser, PHONE)
        page.tap("[data-tool=length]")
        for line in PARALLEL:
            drag(page, *line)
        page.tap("[data-tool=width]")
        drag(page, *ACROSS)
        out: dict[str, Any] = {"drawn": page.evaluate(LABEL_BOXES)}
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-nearby-labels-390x844.png"))
        page.tap("#save")
        wait_until(page, "document.querySelectorAll('#measurements li[data-saved]').length === 3")
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        wait_until(page, "document.querySelectorAll('#stage-main .overlay g.m-saved text')"
                         ".length === 3")
        out["reloaded"] = page.evaluate(LABEL_BOXES)
        page.screenshot(path=str(ARTIFACTS / "viewer-measure-nearby-labels-reloaded-390x844.png"))
        page.context.close()
        return out

    seen = chromium.run(scenario)
    assert viewer.problems == []
    for boxes in (seen["drawn"], seen["reloaded"]):
        labels, visible = boxes["labels"], boxes["visible"]
        assert [label["text"].split(" ")[0] for label in labels] == ["L1", "L2", "W1"]
        for i, label in enumerate(labels):
            assert label["top"] >= boxes["toolbar"]["bottom"], label
            assert visible["left"] <= label["left"] < label["right"] <= visible["right"], label
            assert visible["top"] <= label["top"] < label["bottom"] <= visible["bottom"], label
            assert gap_between(label, label["shape"]) <= CLOSE_TO_SHAPE_PX, label
            for other in labels[i + 1:]:
                assert (label["right"] <= other["left"] or other["right"] <= label["left"]
                        or label["bottom"] <= other["top"]
                        or other["bottom"] <= label["top"]), (label, other)
