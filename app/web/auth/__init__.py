"""Authentication of API calls (bearer tokens) and role checks."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import abort, g, request

from app.web import services
from app.workflow.tokens import Caller, verify_token

F = TypeVar("F", bound=Callable[..., object])


def current_caller() -> Caller | None:
    """The authenticated caller of this request, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return verify_token(services().db, token.strip())


def require(*roles: str) -> Callable[[F], F]:
    """Refuse the request (401 without credentials, 403 without a role) unless allowed."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: object, **kwargs: object) -> object:
            caller = current_caller()
            if caller is None:
                abort(401)
            if not caller.may(*roles):
                abort(403)
            g.caller = caller
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
