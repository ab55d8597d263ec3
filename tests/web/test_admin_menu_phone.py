"""The admin pages' menu on a phone (a Pixel 7, 390×844) in Debian's Chromium, light and dark:
every page link shown whole, on the screen, inside the app bar, none overlapping another or
the page below, in rows of equal cells (no ragged wrap), each a tap target of at least 44×44
px; the app bar no taller than a quarter of the screen; axe-core finding no serious or
critical violation. Screenshots: tests/.artifacts/phone-menu-<page>-<scheme>.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

ADMIN_PAGES = ("/admin/deliveries", "/admin/audit", "/admin/exports", "/admin/accounts",
               "/admin/corrections")
LINKS = ["Capture", "Batch", "Deliveries", "Audit", "Exports", "Accounts", "Corrections",
         "Retention"]

LAYOUT = """() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width,
            height: r.height}; };
  const links = [...document.querySelectorAll(".appnav a")].map((a) => ({
    text: a.textContent.trim(), ...box(a),
    clipped: a.scrollWidth > a.clientWidth + 1,
    visible: a.checkVisibility()}));
  const main = document.querySelector("main");
  return {bar: box(document.querySelector(".appbar")), main: box(main), links,
          width: document.documentElement.scrollWidth};
}"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (min(a["right"], b["right"]) - max(a["left"], b["left"]) > 0.5
            and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 0.5)


def test_the_admin_menu_fits_a_phone_without_a_ragged_wrap(
        app: Flask, users: dict[str, str], chromium: Browser, axe_script: Path) -> None:
    def scenario(browser: Any) -> dict[tuple[str, str], dict[str, Any]]:
        seen = {}
        with served_as_deployed(app) as (url, _):
            context = browser.new_context(**PHONE)
            assert context.request.post(f"{url}/login", data={
                "username": users["admin"], "password": PASSWORD}).ok
            state = context.storage_state()
            context.close()
            for scheme in ("light", "dark"):
                for path in ADMIN_PAGES:
                    context = browser.new_context(**PHONE, color_scheme=scheme,
                                                  storage_state=state, bypass_csp=True)
                    page = context.new_page()
                    page.goto(f"{url}{path}")
                    page.wait_for_selector("main h1")
                    layout = page.evaluate(LAYOUT)
                    layout["small"] = page.evaluate(TAP_TARGETS)
                    name = path.rsplit("/", 1)[1]
                    page.screenshot(path=str(ARTIFACTS / f"phone-menu-{name}-{scheme}.png"))
                    page.add_script_tag(path=str(axe_script))
                    layout["axe"] = page.evaluate(AXE_RUN)
                    seen[(path, scheme)] = layout
                    context.close()
        return seen

    problems = []
    for (path, scheme), seen in chromium.run(scenario).items():
        where = f"{path} ({scheme})"
        links, bar = seen["links"], seen["bar"]
        if [link["text"] for link in links] != LINKS:
            problems.append(f"{where}: links {[link['text'] for link in links]}")
        for link in links:
            if not link["visible"] or link["clipped"]:
                problems.append(f"{where}: {link['text']} hidden or clipped")
            if link["left"] < 0 or link["right"] > 390 or link["top"] < bar["top"] \
                    or link["bottom"] > bar["bottom"]:
                problems.append(f"{where}: {link['text']} outside the screen or the app bar")
            if link["height"] < 44 or link["width"] < 44:
                problems.append(f"{where}: {link['text']} {link['width']}×{link['height']}")
        for i, a in enumerate(links):
            problems += [f"{where}: {a['text']} overlaps {b['text']}"
                         for b in links[i + 1:] if _overlap(a, b)]
        rows = sorted({round(link["top"]) for link in links})
        widths = {round(link["width"]) for link in links}
        if len(rows) > 1 and len(widths) > 1:
            problems.append(f"{where}: a ragged wrap: {len(rows)} rows of widths {widths}")
        if bar["height"] > 844 / 4:
            problems.append(f"{where}: the app bar is {bar['height']} px tall")
        if seen["main"]["top"] < bar["bottom"] - 0.5:
            problems.append(f"{where}: the page starts under the app bar")
        if seen["width"] > 390:
            problems.append(f"{where}: {seen['width']} px wide")
        problems += [f"{where}: {small}" for small in seen["small"]]
        problems += [f"{where}: axe {violation}" for violation in seen["axe"]]
    assert problems == []
