"""Logging in brings the user back: the login form carries a checked ``next`` and ends there
(a path of this site only, never another site's address); a browser's 401 page asks to log in
with a link back to the refused page (its path, not its query); a logged-in user refused for
their role is told so and sent home, not to log in again."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.conftest import PASSWORD, log_in

HTML = {"Accept": "text/html"}
ATTACKS = ("//evil.example", "https://evil.example", "/\\evil", "/\\/evil.example",
           "/\t/evil.example", "javascript:alert(1)", "evil.example/admin", "")


def _next_field(client: FlaskClient, target: str) -> str | None:
    """The ``next`` the login form at ``/login?next=target`` carries, or None."""
    page = client.get("/login", query_string={"next": target})
    found = re.search(r'name="next" value="([^"]*)"', page.get_data(as_text=True))
    return found.group(1) if found else None


def _form_login(client: FlaskClient, username: str, target: str) -> str:
    """Log in through the form with ``next=target``; where the answer sends the browser."""
    answer = client.post("/login", data={"username": username, "password": PASSWORD,
                                         "next": target})
    assert answer.status_code == 303
    return answer.headers["Location"]


def test_the_form_goes_back_to_a_local_page(client: FlaskClient,
                                            users: dict[str, str]) -> None:
    assert _next_field(client, "/admin/deliveries") == "/admin/deliveries"
    assert _form_login(client, users["admin"], "/admin/deliveries") == "/admin/deliveries"
    assert client.get("/admin/deliveries").status_code == 200
    # a query may hold PHI: only the path is kept
    assert _next_field(client, "/admin/audit?patient_id=00123456") == "/admin/audit"
    assert _form_login(client, users["admin"], "/admin/audit?patient_id=00123456") \
        == "/admin/audit"


@pytest.mark.parametrize("target", ATTACKS)
def test_another_sites_address_in_next_lands_on_the_default_page(
        client: FlaskClient, users: dict[str, str], target: str) -> None:
    assert _next_field(client, target) is None
    assert _form_login(client, users["capture"], target) == "/"


def test_a_wrong_password_keeps_next_in_the_form(client: FlaskClient,
                                                 users: dict[str, str]) -> None:
    refused = client.post("/login", data={"username": users["admin"], "password": "wrong!!",
                                          "next": "/admin/deliveries"})
    assert refused.status_code == 401
    assert 'name="next" value="/admin/deliveries"' in refused.get_data(as_text=True)


def test_the_401_page_asks_to_log_in_and_links_back_to_the_path(client: FlaskClient) -> None:
    page = client.get("/admin/deliveries?state=dead", headers=HTML)
    html = page.get_data(as_text=True)
    assert page.status_code == 401
    assert "Please log in to see this page." in html and "Bearer" not in html
    assert re.findall(r'href="(/login[^"]*)"', html) == ["/login?next=/admin/deliveries"]
    api = client.get("/admin/api/audit")  # a machine still gets the API's words
    assert api.status_code == 401 and "Bearer" in api.get_json()["error"]["message"]


def test_a_logged_in_user_refused_for_their_role_is_sent_home(
        client: FlaskClient, users: dict[str, str]) -> None:
    log_in(client, users["view"])
    page = client.get("/admin/deliveries", headers=HTML)
    html = page.get_data(as_text=True)
    assert page.status_code == 403
    assert "Your role cannot open this page." in html
    assert f"logged in as {users['view']}, with the view role" in html
    assert 'href="/login' not in html and 'href="/"' in html


def test_the_batch_pages_log_in_link_comes_back_to_it(client: FlaskClient) -> None:
    html = client.get("/batch").get_data(as_text=True)
    assert 'href="/login?next=/batch"' in html and "then come back" not in html
