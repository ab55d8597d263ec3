"""The admin page Accounts (``/admin/accounts``): admins only, CSRF-protected forms, unlock and
enable at once, disable and revoke only on the second (confirming) post, each action audited
by the workflow as ``ebiw user`` / ``ebiw token`` record it, a stale form answered with the
page and the reason, and never a secret on the page."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import ApiToken, AuditEvent, LoginThrottle, User, WebSession
from app.workflow.tokens import create_token
from tests.conftest import PASSWORD, log_in, services

FORMS = ("unlock", "enable", "disable", "revoke")
ACTIONS = ("user.unlock", "user.enable", "user.disable", "token.revoke")
"""The audit actions of the page's forms (as ``ebiw user`` and ``ebiw token`` record them)."""


def _text(response: object) -> str:
    """A page's text, tags dropped and white space collapsed."""
    html = response.get_data(as_text=True)  # type: ignore[attr-defined]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _admin(app: Flask, users: dict[str, str]) -> tuple[FlaskClient, str]:
    """A client logged in as the admin, and its CSRF token."""
    client = app.test_client()
    return client, log_in(client, users["admin"])


def _audited(app: Flask) -> list[tuple[str, str, str | None, tuple[str, ...],
                                      dict[str, object], str | None]]:
    """(action, actor, role, entities, detail, client) of the records of :data:`ACTIONS`."""
    with services(app).db.session() as db:
        return [(e.action, e.actor, e.role, tuple(e.entities), dict(e.detail), e.client)
                for e in db.scalars(select(AuditEvent).where(AuditEvent.action.in_(ACTIONS))
                                    .order_by(AuditEvent.seq))]


def _disabled(app: Flask, username: str) -> bool:
    with services(app).db.session() as db:
        return db.scalar(select(User.disabled_at).where(User.username == username)) is not None


def _revoked(app: Flask, token_id: int) -> bool:
    with services(app).db.session() as db:
        row = db.get(ApiToken, token_id)
        assert row is not None
        return row.revoked_at is not None


@pytest.fixture
def token_id(app: Flask) -> int:
    """A lost phone's live token."""
    create_token(services(app).db, "ward7-phone", "capture")
    with services(app).db.session() as db:
        return db.scalars(select(ApiToken.id).where(ApiToken.user == "ward7-phone")).one()


def test_only_admins_open_or_post_the_page(app: Flask, users: dict[str, str],
                                          auth: dict[str, dict[str, str]], token_id: int) -> None:
    anonymous = app.test_client()
    assert anonymous.get("/admin/accounts").status_code == 401
    for role in ("capture", "view"):
        client = app.test_client()
        csrf = log_in(client, users[role])
        assert client.get("/admin/accounts").status_code == 403, role
        assert client.get("/admin/accounts", headers=auth[role]).status_code == 403, role
        for form in FORMS:
            body = {"csrf_token": csrf, "username": users["admin"], "token": str(token_id),
                    "confirmed": "yes"}
            assert client.post(f"/admin/accounts/{form}", data=body).status_code == 403
            assert anonymous.post(f"/admin/accounts/{form}", data=body).status_code == 401
    assert not _disabled(app, users["admin"]) and not _revoked(app, token_id)
    assert _audited(app) == []


def test_a_form_without_the_csrf_token_changes_nothing(app: Flask, users: dict[str, str],
                                                       token_id: int) -> None:
    client, csrf = _admin(app, users)
    for form, body in (("disable", {"username": users["capture"]}),
                       ("revoke", {"token": str(token_id)})):
        for sent in ({}, {"csrf_token": "not-the-token"}):
            answer = client.post(f"/admin/accounts/{form}",
                                 data={**body, **sent, "confirmed": "yes"})
            assert answer.status_code == 403, (form, sent)
    assert not _disabled(app, users["capture"]) and not _revoked(app, token_id)
    assert _audited(app) == []
    assert client.post("/admin/accounts/revoke", data={
        "csrf_token": csrf, "token": str(token_id), "confirmed": "yes"}).status_code == 200


def test_the_page_lists_accounts_and_tokens_without_secrets(
        app: Flask, users: dict[str, str]) -> None:
    db = services(app).db
    secret = create_token(db, "pacs-bridge", "view")
    client, _ = _admin(app, users)
    page = client.get("/admin/accounts")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    text = _text(page)
    for name in users.values():
        assert name in text
    assert "admin-nurse (you)" in text
    assert re.search(r"1 pacs-bridge view \d+ \w{3} 20\d\d, \d\d:\d\d UTC never never Live "
                     r"Revoke token 1…", text)
    with db.session() as session:
        hashes = set(session.scalars(select(User.password_hash))) | set(
            session.scalars(select(ApiToken.token_hash)))
    html = page.get_data(as_text=True)
    assert secret not in html and not any(h in html for h in hashes)
    # no Disable button for the admin's own account; one for the others
    assert 'name="username" value="admin-nurse"' not in html
    assert html.count('action="/admin/accounts/disable"') == 2


def test_revoke_shows_the_token_first_and_revokes_on_confirm_only(
        app: Flask, users: dict[str, str], token_id: int) -> None:
    client, csrf = _admin(app, users)
    form = {"csrf_token": csrf, "token": str(token_id)}
    asked = client.post("/admin/accounts/revoke", data=form)
    assert asked.status_code == 200
    text = _text(asked)
    assert f"Revoke token {token_id}? User ward7-phone Role capture Created" in text
    assert "refused from its next request on" in text and "cannot be undone" in text
    assert f'name="token" value="{token_id}"' in asked.get_data(as_text=True)
    assert "API tokens" not in text  # only the question: nothing else to tap
    assert not _revoked(app, token_id) and _audited(app) == []

    done = client.post("/admin/accounts/revoke", data={**form, "confirmed": "yes"})
    assert done.status_code == 200
    assert f"Token {token_id} is revoked: it is refused from its next request on." in \
        _text(done)
    assert re.search(rf"{token_id} ward7-phone capture .* never never Revoked \d+ \w{{3}}",
                     _text(done))
    assert _revoked(app, token_id)
    assert _audited(app) == [("token.revoke", users["admin"], "admin",
                                        (f"token:{token_id}",), {"revoked": 1}, "127.0.0.1")]

    # a stale page (another admin revoked it meanwhile), at either step: the reason, no change
    for step in ({}, {"confirmed": "yes"}):
        stale = client.post("/admin/accounts/revoke", data={**form, **step})
        assert stale.status_code == 422
        assert f"Token {token_id} is already revoked: nothing to do." in _text(stale)
        assert "API tokens" in _text(stale)  # with the list as it is now
    unknown = client.post("/admin/accounts/revoke", data={**form, "token": "999"})
    assert unknown.status_code == 422 and "No token is numbered 999." in _text(unknown)
    assert len(_audited(app)) == 1


def test_disable_shows_what_ends_and_acts_on_confirm_only_then_enable(
        app: Flask, users: dict[str, str]) -> None:
    nurse = app.test_client()
    log_in(nurse, users["capture"])
    client, csrf = _admin(app, users)
    form = {"csrf_token": csrf, "username": users["capture"]}
    asked = client.post("/admin/accounts/disable", data=form)
    assert asked.status_code == 200
    text = _text(asked)
    assert f"Disable {users['capture']}? Role capture Signs in with Password Created" in text
    assert "every open session of theirs ends now" in text
    assert "API tokens are not revoked" in text
    assert not _disabled(app, users["capture"]) and _audited(app) == []
    assert nurse.get("/api/v1/me").status_code == 200

    done = client.post("/admin/accounts/disable", data={**form, "confirmed": "yes"})
    assert done.status_code == 200
    assert f"{users['capture']} is disabled and logged out everywhere." in _text(done)
    assert _disabled(app, users["capture"])
    assert nurse.get("/api/v1/me").status_code == 401  # logged out at once
    again = client.post("/admin/accounts/disable", data=form)  # a stale page
    assert again.status_code == 422
    assert f"{users['capture'].capitalize()} is already disabled: nothing to do." in _text(again)

    enabled = client.post("/admin/accounts/enable", data=form)
    assert enabled.status_code == 200
    assert f"{users['capture']} is enabled: they can log in again." in _text(enabled)
    assert not _disabled(app, users["capture"])
    log_in(nurse, users["capture"])
    admin = users["admin"]
    assert _audited(app) == [
        ("user.disable", admin, "admin", (f"user:{users['capture']}",),
         {"was_disabled": False, "sessions_ended": 1}, "127.0.0.1"),
        ("user.enable", admin, "admin", (f"user:{users['capture']}",),
         {"was_disabled": True}, "127.0.0.1")]


def test_an_admin_cannot_disable_their_own_account_and_a_gone_one_is_named(
        app: Flask, users: dict[str, str]) -> None:
    client, csrf = _admin(app, users)
    for step in ({}, {"confirmed": "yes"}):
        own = client.post("/admin/accounts/disable", data={
            "csrf_token": csrf, "username": users["admin"], **step})
        assert own.status_code == 422
        assert "You cannot disable your own account: ask another administrator." in _text(own)
        gone = client.post("/admin/accounts/disable", data={
            "csrf_token": csrf, "username": "left.nurse", **step})
        assert gone.status_code == 422 and "No such user: left.nurse." in _text(gone)
        assert "API tokens" in _text(gone)
    assert client.get("/api/v1/me").status_code == 200  # still logged in
    assert not _disabled(app, users["admin"]) and _audited(app) == []


def test_unlock_lets_a_locked_out_nurse_log_in_at_once(app: Flask, users: dict[str, str]) -> None:
    nurse = app.test_client()
    for _ in range(5):
        nurse.post("/login", json={"username": users["capture"], "password": "wrong password!"})
    assert nurse.post("/login", json={"username": users["capture"], "password": PASSWORD}) \
        .status_code == 401
    client, csrf = _admin(app, users)
    assert re.search(rf"{users['capture']} capture Password Active; locked until \d+ \w{{3}} "
                     rf"20\d\d, \d\d:\d\d UTC Unlock {users['capture']} Disable",
                     _text(client.get("/admin/accounts")))
    done = client.post("/admin/accounts/unlock", data={
        "csrf_token": csrf, "username": users["capture"]})
    assert done.status_code == 200
    assert f"{users['capture']} is unlocked: they can log in again now." in _text(done)
    assert "locked until" not in _text(done)
    with services(app).db.session() as db:
        assert db.scalars(select(LoginThrottle)).all() == []
    log_in(nurse, users["capture"])
    with services(app).db.session() as db:
        assert db.scalars(select(WebSession)).all()
    assert _audited(app) == [("user.unlock", users["admin"], "admin",
                                       (f"user:{users['capture']}",), {"was_locked": True},
                                       "127.0.0.1")]
