"""Logging in, in Debian's Chromium at phone size (Playwright, :data:`PHONE`): the plain
``/login`` form (an admin sent there by the 401 page of ``/admin/deliveries`` is back on it),
another site's form post refused, and what the login screens say: wrong credentials, a lock
with its minutes, a login that really ended, nothing at a first visit.

The app runs under the Content-Security-Policy a deployment adds (``form-action 'self'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import delete

from app.db.models import WebSession
from tests.conftest import (
    ARTIFACTS,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    served_as_deployed,
    services,
)

WRONG = "wrong password!!"
ENDED = "Your login has ended"


@pytest.fixture
def url(app: Flask, users: dict[str, str]) -> Iterator[str]:
    """The app with one account per role, on a loopback port as deployed."""
    with served_as_deployed(app) as (base, _hold):
        yield base


def phone_page(browser: Any, problems: list[str]) -> Any:
    """A page in a new Pixel 7 context that records script errors."""
    page = browser.new_context(**PHONE).new_page()
    page.set_default_timeout(20000)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page


def submit_form(page: Any, base: str, username: str, password: str) -> Any:
    """Fill and send the plain ``/login`` form (already open); the answer to the post."""
    page.fill("#plain-username", username)
    page.fill("#plain-password", password)
    with page.expect_response(lambda r: r.url == f"{base}/login"
                              and r.request.method == "POST") as answer:
        page.click("main form button[type=submit]")
    page.wait_for_load_state()
    return answer.value


def open_app(page: Any, base: str) -> None:
    """Open the capture app and wait for its login screen."""
    page.goto(f"{base}/")
    page.wait_for_selector("#screen-login:not([hidden])")


def app_login(page: Any, username: str, password: str) -> str:
    """Log in on the capture app's screen; its message once the answer is shown."""
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_response(lambda r: r.url.endswith("/login")
                              and r.request.method == "POST"):
        page.click("#login-form button[type=submit]")
    page.wait_for_function("() => !document.getElementById('login-error').hidden")
    return page.text_content("#login-error")


def test_the_login_form_logs_in_and_lands_in_the_app(chromium: Browser, url: str,
                                                     users: dict[str, str]) -> None:
    problems: list[str] = []

    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, problems)
        page.goto(f"{url}/login")
        answer = submit_form(page, url, users["capture"], PASSWORD)
        page.wait_for_selector("#screen-home:not([hidden])")
        page.screenshot(path=str(ARTIFACTS / "login-form-home.png"))
        seen = {"status": answer.status, "url": page.url, "who": page.text_content("#who"),
                "me": page.request.get(f"{url}/api/v1/me").json()["user"]}
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen == {"status": 303, "url": f"{url}/", "who": users["capture"],
                    "me": users["capture"]}
    assert problems == []


def test_an_admin_logs_in_from_the_401_page_and_is_back_on_the_deliveries(
        chromium: Browser, url: str, users: dict[str, str]) -> None:
    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        refused = page.goto(f"{url}/admin/deliveries?state=dead")
        before = (refused.status if refused else None, page.text_content("main p"),
                  page.evaluate(TAP_TARGETS))
        page.click("a:has-text('Log in')")  # the 401 page's link
        page.wait_for_selector("#plain-username")
        form = (page.url, page.evaluate(TAP_TARGETS))
        answer = submit_form(page, url, users["admin"], PASSWORD)
        page.wait_for_url(f"{url}/admin/deliveries")
        seen = {"before": before, "form": form, "status": answer.status,
                "title": page.text_content("h1")}
        page.screenshot(path=str(ARTIFACTS / "login-form-admin-deliveries.png"))
        # the page's own forms post too (as its "Retry all dead" form, shown only with dead
        # deliveries): with the CSRF token, from this origin
        with page.expect_response(f"{url}/admin/deliveries/retry") as retried:
            page.evaluate("""async () => {
              const me = await (await fetch("/api/v1/me")).json();
              const form = document.createElement("form");
              form.method = "post";
              form.action = "/admin/deliveries/retry";
              const token = document.createElement("input");
              Object.assign(token, { type: "hidden", name: "csrf_token", value: me.csrf_token });
              form.append(token);
              document.body.append(form);
              form.submit();
            }""")
        page.wait_for_url(f"{url}/admin/deliveries?retried=0")  # none was dead
        seen["retry"] = (retried.value.status, retried.value.request.all_headers()["origin"])
        page.context.close()
        return seen

    assert chromium.run(run) == {
        "before": (401, "Please log in to see this page.", []),
        "form": (f"{url}/login?next=/admin/deliveries", []), "status": 303,
        "title": "Deliveries", "retry": (303, url)}


def test_another_sites_form_post_is_refused(chromium: Browser, url: str,
                                           users: dict[str, str]) -> None:
    """A page of another site (``no-referrer``, so the post says ``Origin: null``) posts the
    victim's browser into the attacker's account, with a form token the attacker fetched."""
    token = requests.get(f"{url}/login", timeout=10).cookies["ebiw_login"]
    evil = (f'<!doctype html><meta name="referrer" content="no-referrer">'
            f'<form method="post" action="{url}/login">'
            f'<input name="username" value="{users["capture"]}">'
            f'<input name="password" value="{PASSWORD}">'
            f'<input name="login_token" value="{token}">'
            f'<button type="submit">Win a prize</button></form>')

    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        page.goto(f"{url}/login")  # the victim's browser has a login form cookie of its own
        page.route("http://evil.example/", lambda route: route.fulfill(
            status=200, content_type="text/html", body=evil))
        page.goto("http://evil.example/")
        with page.expect_response(f"{url}/login") as answer:
            page.click("button")
        page.wait_for_load_state()
        seen = {"status": answer.value.status, "origin": answer.value.request.headers.get(
            "origin"), "text": page.text_content("body"),
            "me": page.request.get(f"{url}/api/v1/me").status}
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["status"] == 403 and seen["origin"] == "null"
    assert "Requests from other sites are not allowed" in seen["text"]
    assert seen["me"] == 401


def test_a_wrong_password_says_so_on_the_form_and_in_the_app(
        chromium: Browser, url: str, users: dict[str, str]) -> None:
    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        page.goto(f"{url}/login")
        form = [(submit_form(page, url, name, WRONG).status, page.text_content("#login-message"))
                for name in (users["capture"], "nobody-here")]
        open_app(page, url)
        app = [app_login(page, name, WRONG) for name in (users["capture"], "nobody-here")]
        page.screenshot(path=str(ARTIFACTS / "login-app-wrong-password.png"))
        seen = {"form": form, "app": app,
                "screen": page.is_visible("#screen-login")}
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["form"] == [(401, "Wrong username or password.")] * 2
    assert seen["app"] == ["Wrong username or password."] * 2
    assert seen["screen"]


def test_a_first_visit_shows_the_login_without_saying_it_ended(
        chromium: Browser, url: str) -> None:
    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        open_app(page, url)
        page.wait_for_timeout(500)  # anything the boot would still say
        seen = {"error_hidden": page.is_hidden("#login-error"),
                "error": page.text_content("#login-error"),
                "text": page.inner_text("body")}
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["error_hidden"] and seen["error"] == ""
    assert "ended" not in seen["text"] and "Log in" in seen["text"]


def test_a_login_ended_on_the_server_mid_use_says_so(chromium: Browser, app: Flask, url: str,
                                                     users: dict[str, str]) -> None:
    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        open_app(page, url)
        page.fill("#username", users["capture"])
        page.fill("#password", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#screen-home:not([hidden])")
        with services(app).db.session() as db:  # the server forgets the session
            db.execute(delete(WebSession))
        page.click("#start")
        page.wait_for_selector("#screen-identify:not([hidden])")
        page.fill("#mrn", "00123456")
        page.click("#mrn-form button[type=submit]")
        page.wait_for_selector("#screen-login:not([hidden])")
        page.wait_for_function("() => !document.getElementById('login-error').hidden")
        seen = {"error": page.text_content("#login-error")}
        page.context.close()
        return seen

    assert chromium.run(run)["error"] == f"{ENDED}. Log in again to continue."


def test_a_locked_account_says_for_how_many_minutes(chromium: Browser, url: str,
                                                    users: dict[str, str]) -> None:
    def run(browser: Any) -> dict[str, Any]:
        page = phone_page(browser, [])
        page.goto(f"{url}/login")
        for _ in range(5):
            submit_form(page, url, users["capture"], WRONG)
        locked = submit_form(page, url, users["capture"], PASSWORD)
        page.screenshot(path=str(ARTIFACTS / "login-form-locked.png"))
        seen = {"status": locked.status, "retry_after": locked.headers.get("retry-after"),
                "form": page.text_content("#login-message"),
                "fields": page.is_visible("#plain-username")}
        open_app(page, url)
        seen["app"] = app_login(page, users["capture"], PASSWORD)
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["status"] == 401 and 14 * 60 < int(seen["retry_after"]) <= 15 * 60
    assert seen["form"] == ("Too many failed logins: this account is locked for 15 minutes. "
                            "Try again then, or ask an administrator to unlock it.")
    assert seen["fields"]
    assert seen["app"] == ("Too many failed logins: try again in 15 minutes or ask an "
                           "administrator to unlock the account.")
