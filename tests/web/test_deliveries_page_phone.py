"""The admin deliveries page driven on a phone (a Pixel 7, 390×844) in Debian's Chromium: its
filters, its retries and what it says after each. Every screen is checked for taps targets of
at least 44×44 px and for axe-core finding no serious or critical violation. Screenshots go
to tests/.artifacts/phone-deliveries-<step>.png."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db.models import Delivery, DeliveryStatus
from tests.batch.conftest import import_patients
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
from tests.viewer.conftest import CHART, photo, upload_study

REFUSED = "HTTP 409 from the PACS: refused"


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """Two PACS destinations, never reached (no worker runs: the rows change only as the
    tests set them); no EMR; no colour step."""
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": [
        {"name": name, "type": "stow-rs", "url": "http://127.0.0.1:9/dicomweb"}
        for name in ("pacs-a", "pacs-b")]}))
    return {"color_normalization": False, "destinations_file": config, "emr_notifiers": ""}


@dataclass(frozen=True)
class Outbox:
    """The served app, the admin's browser state and the delivery ids by destination and
    state as seeded."""

    app: Flask
    url: str
    admin: dict[str, Any]
    ids: dict[tuple[str, str], list[int]]


@pytest.fixture
def outbox(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
           users: dict[str, str], chromium: Browser, tmp_path: Path) -> Iterator[Outbox]:
    """Three photos, so three deliveries to each destination: to pacs-a two dead (refused
    by the PACS, 8 attempts) and one failed (3 attempts); to pacs-b one dead, one failed and
    one queued."""
    import_patients(app, tmp_path)
    with served_as_deployed(app) as (url, _):
        upload_study(client, auth["capture"], [photo(CHART)] * 3)
        ids: dict[tuple[str, str], list[int]] = {}
        with services(app).db.session() as db:
            for name, states in (("pacs-a", ("dead", "dead", "failed")),
                                 ("pacs-b", ("dead", "failed", "queued"))):
                rows = db.scalars(select(Delivery.id).where(Delivery.destination == name)
                                  .order_by(Delivery.id)).all()
                assert len(rows) == 3
                for row, state in zip(rows, states, strict=True):
                    ids.setdefault((name, state), []).append(row)
            db.execute(update(Delivery).where(Delivery.id.in_(
                ids["pacs-a", "dead"] + ids["pacs-b", "dead"])).values(
                status=DeliveryStatus.DEAD, attempts=8, last_error=REFUSED))
            db.execute(update(Delivery).where(Delivery.id.in_(
                ids["pacs-a", "failed"] + ids["pacs-b", "failed"])).values(
                attempts=3, last_error="connection refused"))

        def log_in(browser: Any) -> dict[str, Any]:
            context = browser.new_context(**PHONE)
            assert context.request.post(f"{url}/login", data={
                "username": users["admin"], "password": PASSWORD}).ok
            state = context.storage_state()
            context.close()
            return state

        yield Outbox(app, url, chromium.run(log_in), ids)


def admin_page(browser: Any, outbox: Outbox, path: str) -> Any:
    """A phone-sized page of the admin's session (CSP bypassed, for axe) that opened
    ``path``."""
    page = browser.new_context(**PHONE, storage_state=outbox.admin, bypass_csp=True).new_page()
    page.goto(f"{outbox.url}{path}")
    return page


def look(page: Any, axe: Path, step: str) -> dict[str, Any]:
    """What the screen shows (its URL, text and table rows), its tap targets under 44 px and
    axe's serious or critical violations; a screenshot."""
    page.wait_for_load_state()
    seen = {"url": page.url, "text": page.locator("main").inner_text(),
            "status": page.locator("main [role=status]").all_inner_texts(),
            "rows": page.evaluate("""() => [...[...document.querySelectorAll(
              ".table-wrap tbody")].at(-1)?.rows ?? []].map((tr) => Object.fromEntries([...tr.cells]
              .filter((td) => td.dataset.label)
              .map((td) => [td.dataset.label, td.innerText.trim()])))"""),
            "small": page.evaluate(TAP_TARGETS)}
    page.screenshot(path=str(ARTIFACTS / f"phone-deliveries-{step}.png"), full_page=True)
    page.add_script_tag(path=str(axe))
    seen["axe"] = page.evaluate(AXE_RUN)
    return seen


def problems(seen: dict[str, dict[str, Any]]) -> list[str]:
    """The tap targets under 44 px and the axe violations of every screen seen."""
    return [f"{step}: {problem}" for step, screen in seen.items()
            for problem in screen["small"] + screen["axe"]]


def test_the_state_chips_keep_the_destination_shown(outbox: Outbox, chromium: Browser,
                                                     axe_script: Path) -> None:
    def scenario(browser: Any) -> dict[str, dict[str, Any]]:
        page = admin_page(browser, outbox, "/admin/deliveries")
        seen = {}
        page.click("a[aria-label^='Dead deliveries to pacs-a']")
        seen["dead-a"] = look(page, axe_script, "dead-pacs-a")
        page.click("nav.chips a:has-text('Failed')")
        seen["failed-a"] = look(page, axe_script, "failed-pacs-a")
        page.click("nav.chips a:has-text('All')")
        seen["all-a"] = look(page, axe_script, "all-pacs-a")
        page.click("nav.chips a:has-text('Every destination')")
        seen["all"] = look(page, axe_script, "all")
        page.context.close()
        return seen

    seen = chromium.run(scenario)
    assert problems(seen) == []
    ids = outbox.ids

    def shown(step: str) -> list[tuple[str, str, int]]:
        return sorted((r["Destination"], r["State"], int(r["#"])) for r in seen[step]["rows"])

    assert shown("dead-a") == [("pacs-a", "dead", i) for i in ids["pacs-a", "dead"]]
    assert seen["failed-a"]["url"].endswith("/admin/deliveries?destination=pacs-a&state=failed")
    assert "Failed deliveries to pacs-a" in seen["failed-a"]["text"]
    assert shown("failed-a") == [("pacs-a", "failed", i) for i in ids["pacs-a", "failed"]]
    assert seen["all-a"]["url"].endswith("/admin/deliveries?destination=pacs-a")
    assert {r["Destination"] for r in seen["all-a"]["rows"]} == {"pacs-a"}
    assert len(seen["all-a"]["rows"]) == 3
    assert seen["all"]["url"].endswith("/admin/deliveries")
    assert len(seen["all"]["rows"]) == 6


def test_retry_all_dead_asks_with_the_count_then_says_how_many_were_queued_again(
        outbox: Outbox, chromium: Browser, axe_script: Path) -> None:
    def scenario(browser: Any) -> dict[str, dict[str, Any]]:
        page = admin_page(browser, outbox, "/admin/deliveries?destination=pacs-a")
        seen = {}
        page.click("summary[aria-label='Retry all dead deliveries to pacs-a']")
        seen["asked"] = look(page, axe_script, "retry-all-asked")
        seen["asked"]["question"] = page.locator("details[open] form").inner_text()
        page.click("details[open] button[type=submit]")
        seen["retried"] = look(page, axe_script, "retry-all-done")
        page.context.close()
        return seen

    seen = chromium.run(scenario)
    assert problems(seen) == []
    assert "Retry 2 dead deliveries to pacs-a?" in seen["asked"]["question"]
    assert "Retry 2" in seen["asked"]["question"]
    retried = seen["retried"]
    assert retried["url"].endswith("/admin/deliveries?destination=pacs-a&retried=2")
    assert retried["status"] == ["2 deliveries queued again."]
    ids = outbox.ids
    rows = {int(r["#"]): r for r in retried["rows"]}
    for i in ids["pacs-a", "dead"]:
        assert (rows[i]["State"], rows[i]["Attempts"], rows[i]["Reason"]) == \
            ("queued", "0", f"Before the retry: {REFUSED}")
    with services(outbox.app).db.session() as db:
        status = {i: s for i, s in db.execute(select(Delivery.id, Delivery.status))}
    assert {status[i] for i in ids["pacs-a", "dead"]} == {DeliveryStatus.PENDING}
    assert {status[i] for i in ids["pacs-b", "dead"]} == {DeliveryStatus.DEAD}


def test_retrying_a_row_sent_meanwhile_goes_back_to_the_page_saying_so(
        outbox: Outbox, chromium: Browser, axe_script: Path) -> None:
    [sent] = outbox.ids["pacs-b", "failed"]
    [cancelled] = outbox.ids["pacs-b", "dead"]
    [failed] = outbox.ids["pacs-a", "failed"]

    def change_meanwhile() -> None:
        """What the worker and a rejection do after the page was shown."""
        with services(outbox.app).db.session() as db:
            db.execute(update(Delivery).where(Delivery.id == sent).values(
                status=DeliveryStatus.SENT, attempts=4, last_error=None))
            db.execute(update(Delivery).where(Delivery.id == cancelled).values(
                status=DeliveryStatus.CANCELLED, last_error="the instance was rejected"))

    def scenario(browser: Any) -> dict[str, dict[str, Any]]:
        page = admin_page(browser, outbox, "/admin/deliveries?destination=pacs-b&state=failed")
        seen = {}
        other = page.context.new_page()
        other.goto(f"{outbox.url}/admin/deliveries?state=dead")
        change_meanwhile()
        with page.expect_navigation() as answer:
            page.click(f"form[action*='/{sent}/retry'] button")
        seen["stale"] = look(page, axe_script, "retry-sent")
        seen["stale"]["code"] = answer.value.status
        other.click(f"form[action*='/{cancelled}/retry'] button")
        seen["cancelled"] = look(other, axe_script, "retry-cancelled")
        page.goto(f"{outbox.url}/admin/deliveries?destination=pacs-a&state=failed")
        page.click(f"form[action*='/{failed}/retry'] button")
        seen["retried"] = look(page, axe_script, "retry-one")
        page.context.close()
        return seen

    seen = chromium.run(scenario)
    assert problems(seen) == []
    stale = seen["stale"]
    assert stale["code"] == 200
    assert stale["url"].endswith(
        f"/admin/deliveries?destination=pacs-b&state=failed&not_retried={sent}&was=sent")
    assert stale["status"] == [f"Delivery {sent} was already sent: nothing was done."]
    assert "Failed deliveries to pacs-b" in stale["text"]
    with services(outbox.app).db.session() as db:
        row = db.get(Delivery, sent)
        assert row is not None and (row.status, row.attempts) == (DeliveryStatus.SENT, 4)
    assert seen["cancelled"]["status"] == [
        f"Delivery {cancelled} was cancelled (its instance was rejected): nothing was done."]
    retried = seen["retried"]
    assert retried["url"].endswith("/admin/deliveries?destination=pacs-a&state=failed&retried=1")
    assert retried["status"] == ["1 delivery queued again."]
