"""The shell every HTML page shares: the header's navigation by role, the user's name and the
log-out form (``templates/partials/header.html``), the ``when`` filter for times and the
``sentence`` filter for messages shown on a page.

Templates call ``app_shell()`` (a context processor puts it in every template) only where they
show the header, so that rendering ``sw.js`` or a page without a header looks nobody up. The
capture app's page at ``/`` is cached for everyone: it renders the header without a login and
its script fills in the user and the links of the user's role (``static/js/shell.js``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, request, url_for
from markupsafe import Markup

from app.web import services
from app.web.auth import current_login

bp = Blueprint("shell", __name__)


@dataclass(frozen=True)
class NavLink:
    """One link of the header, shown to callers that may use the page it opens."""

    href: str
    label: str
    roles: tuple[str, ...]

    def shown_to(self, role: str | None) -> bool:
        """Whether a caller of ``role`` sees the link (admins see every link)."""
        return role is not None and (role == "admin" or role in self.roles)


_NAV = (NavLink("/", "Capture", ("capture", "view")),
        NavLink("/batch", "Batch", ("capture",)),
        NavLink("/admin/deliveries", "Deliveries", ("admin",)),
        NavLink("/admin/audit", "Audit", ("admin",)),
        NavLink("/admin/exports", "Exports", ("admin",)),
        NavLink("/admin/accounts", "Accounts", ("admin",)))


def nav() -> tuple[NavLink, ...]:
    """The header's links, in order; the capture app shows them by role client-side.

    Guarantees: a link is shown only to roles its page answers: Corrections to admins, and to
    clinicians (``capture``) only while ``EBIW_CORRECTION_WINDOW_MINUTES`` is above 0, when
    the page lists the studies they may still correct."""
    clinicians = ("capture",) if services().settings.correction_window_minutes > 0 else ()
    return (*_NAV, NavLink("/admin/corrections", "Corrections", ("admin", *clinicians)),
            NavLink("/admin/retention", "Retention", ("admin",)))


@dataclass(frozen=True)
class Shell:
    """What the header shows for this request's web login (all None without one)."""

    user: str | None
    role: str | None
    csrf_token: str | None
    home: str
    """Where "back" leads: the launch patient's studies for a session opened from the EMR,
    else the capture app."""

    def links(self) -> list[tuple[NavLink, bool]]:
        """The links this user sees, each with whether it is the page being shown."""
        return [(link, request.path == link.href) for link in nav()
                if link.shown_to(self.role)]


def app_shell() -> Shell:
    """The header of this request: the session cookie's user, role and CSRF token."""
    login = current_login()
    if login is None:
        return Shell(None, None, None, "/")
    launched = login.caller.patient is not None \
        and "launch.patient_page" in current_app.view_functions
    return Shell(login.caller.user, login.caller.role, login.csrf_token,
                 url_for("launch.patient_page") if launched else "/")


@bp.app_context_processor
def shell_context() -> dict[str, Any]:
    """``app_shell`` (called lazily by the header) and ``nav`` in every template."""
    return {"app_shell": app_shell, "nav": nav}


@bp.app_template_filter("when")
def when(value: datetime | str | None) -> Markup:
    """A time as ``<time datetime=ISO>6 Dec 2026, 23:42 UTC</time>``: readable without script,
    and ``static/js/local-times.js`` rewrites it in the reader's own time zone."""
    if not value:
        return Markup("")
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds"), f"{moment.day} {moment:%b %Y, %H:%M} UTC")


@bp.app_template_filter("sentence")
def sentence(message: str) -> str:
    """``message`` as a sentence: its first letter capitalised and a full stop at its end
    unless it ends with one already. The workflow's messages are clauses, lower case and
    without a stop, as the API and the CLI give them; a page shows them as sentences."""
    text = message.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


@bp.app_template_filter("counted")
def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with its ``noun``, singular for exactly 1, else ``plural`` (default: the noun
    and an s): ``3|counted("photo")`` is "3 photos", ``1|counted("study", "studies")``
    "1 study"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def confirmed() -> bool:
    """Whether this post of a two-step page (corrections, retention, exports, accounts) is the
    confirmation of its preview (``confirmed=yes``), not the first step, which changes nothing."""
    return request.form.get("confirmed") == "yes"
