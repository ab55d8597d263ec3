"""The wound trajectory page on a phone (a Pixel 7, 390×844) in Debian's Chromium, light and
dark, served under a deployment's CSP: Chart.js draws the chart (pixels of the area line on the
canvas), the table gives the figures of the trajectory, every visit links to its study, nothing
is wider than the screen, every control is a tap target of at least 44×44 px, axe-core finds no
serious or critical violation, no CSP violation or script error. Screenshots go to
tests/.artifacts/phone-wound-<scheme>.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from app.workflow.trajectory import wound_trajectory
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    served_as_deployed,
    services,
)
from tests.viewer.test_wound_trajectory import seed

AREA_RGB = (0x1F, 0x77, 0xB4)  # static/js/wound.js: the area line's colour

CANVAS_PIXELS = """(rgb) => {
  const canvas = document.getElementById("chart");
  const { width, height } = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let painted = 0, area = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    painted += 1;
    colours.add((data[i] >> 4) * 256 + (data[i + 1] >> 4) * 16 + (data[i + 2] >> 4));
    if (Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1])
        + Math.abs(data[i + 2] - rgb[2]) < 30 && data[i + 3] > 200) area += 1;
  }
  return { width, height, painted: painted / (width * height), colours: colours.size, area,
           drawn: canvas.dataset.drawn || null };
}"""

TABLE = """() => [...document.querySelectorAll("#visits tbody tr")].map((row) => ({
  area: row.dataset.area, href: row.querySelector("a.visit").getAttribute("href"),
  cells: [...row.cells].map((cell) => cell.innerText.trim()) }))"""


def look(browser: Any, url: str, path: str, state: dict[str, Any], scheme: str,
         axe: Path) -> dict[str, Any]:
    """Open ``path`` under the deployment's CSP and measure it, screenshot it; then run axe on
    it in a context that bypasses the CSP (axe is injected as a script)."""
    context = browser.new_context(**PHONE, color_scheme=scheme, storage_state=state)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)  # e.g. a CSP violation
            if message.type == "error" else None)
    page.goto(f"{url}{path}")
    page.wait_for_selector("#chart[data-drawn]", timeout=30_000)
    seen = {
        "canvas": page.evaluate(CANVAS_PIXELS, list(AREA_RGB)),
        "rows": page.evaluate(TABLE),
        "four_week": page.locator("#four-week").inner_text(),
        "width": page.evaluate("document.documentElement.scrollWidth"),
        "small": page.evaluate(TAP_TARGETS),
        "csv": page.locator("a[download]").get_attribute("href"),
        "errors": errors,
    }
    page.screenshot(path=str(ARTIFACTS / f"phone-wound-{scheme}.png"), full_page=True)
    context.close()
    context = browser.new_context(**PHONE, color_scheme=scheme, storage_state=state,
                                  bypass_csp=True)
    page = context.new_page()
    page.goto(f"{url}{path}")
    page.wait_for_selector("#chart[data-drawn]", timeout=30_000)
    page.add_script_tag(path=str(axe))
    seen["axe"] = page.evaluate(AXE_RUN)
    context.close()
    return seen


def test_the_trajectory_page_draws_its_chart_and_table_on_a_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str], chromium: Browser, axe_script: Path) -> None:
    def scenario(browser: Any, url: str, path: str) -> dict[str, Any]:
        context = browser.new_context(**PHONE)
        assert context.request.post(f"{url}/login", data={
            "username": users["view"], "password": PASSWORD}).ok
        state = context.storage_state()
        context.close()
        seen = {scheme: look(browser, url, path, state, scheme, axe_script)
                for scheme in ("light", "dark")}
        # The viewer of the visit-2 study links both wounds measured in it, tappable.
        context = browser.new_context(**PHONE, storage_state=state)
        page = context.new_page()
        page.goto(f"{url}/studies/{seeded.studies[1]}")
        page.wait_for_selector(".wounds a")
        seen["viewer"] = page.evaluate("""() => [...document.querySelectorAll(".wounds a")]
          .map((a) => { const b = a.getBoundingClientRect();
            return [a.getAttribute("href"), b.width >= 44 && b.height >= 44]; })""")
        context.close()
        return seen

    with served_as_deployed(app) as (url, _):  # its CSP hook goes in before any request
        seeded = seed(app, client, auth["capture"])
        path = f"/wounds/{seeded.tracking_uid}"
        seen = chromium.run(lambda browser: scenario(browser, url, path))
    trajectory = wound_trajectory(services(app), seeded.tracking_uid)

    assert seen.pop("viewer") == [  # by label: "left heel", "sacrum"
        [f"/wounds/{seeded.tracking_uid}", True],
        [f"/wounds/{seeded.other_wound['tracking_uid']}", True]]
    for scheme, result in seen.items():
        canvas = result["canvas"]
        assert canvas["drawn"] == "5", (scheme, canvas)  # 4 areas + 1 length point
        assert canvas["width"] >= 300 and canvas["height"] >= 250, canvas
        assert canvas["area"] > 200 and canvas["colours"] >= 4, (scheme, canvas)
        assert result["errors"] == [], (scheme, result["errors"])
        rows = result["rows"]
        assert [r["href"] for r in rows] == [f"/studies/{s}" for s in seeded.studies]
        assert [float(r["area"]) for r in rows] == [
            round(v.figures["area"].value, 2) for v in trajectory.visits]
        first, third = trajectory.visits[0], trajectory.visits[2]
        assert f"{first.figures['area'].value:.1f} ± " in rows[0]["cells"][1]
        since_first = third.figures["area"].since_first
        assert since_first is not None and since_first.percent is not None
        assert f"({since_first.percent:+.0f} %)" in rows[2]["cells"][2]
        four = trajectory.four_week.percent
        assert four is not None and result["four_week"] == f"{four:.0f} %"
        assert result["csv"] == f"/api/v1/wounds/{seeded.tracking_uid}/trajectory.csv"
        assert result["width"] <= 390, (scheme, result["width"])
        assert result["small"] == [], (scheme, result["small"])
        assert result["axe"] == [], (scheme, result["axe"])
