"""Per-route rate limits (login, identify, upload, guidance): 429 with ``Retry-After`` when
exceeded.

The counters are shared by every worker (:mod:`app.workflow.ratelimit`): in the database, or
in Redis when ``EBIW_REDIS_URL`` is set. Authenticated routes count per user, the login per
client address (behind a reverse proxy set ``EBIW_PROXY_HOPS`` so that address is the
phone's, not the proxy's).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import Response, current_app, g, request

from app.web import services
from app.web.errors import error_response
from app.workflow.ratelimit import RateLimiter

F = TypeVar("F", bound=Callable[..., object])

EXTENSION = "ebiw.ratelimit"
LIMITS = {"login": ("rate_login_per_minute", 60),
          "identify": ("rate_identify_per_minute", 60),
          "upload": ("rate_upload_per_minute", 60),
          "guidance": ("rate_guidance_per_10s", 10)}
"""Limit name -> (the setting that holds its requests per window, the window in seconds)."""


def refused(name: str) -> tuple[Response, int] | None:
    """Count this request against limit ``name``; the 429 answer when it is over the limit.

    The client is the authenticated user (``g.caller``) when there is one, else the address.
    """
    limiter: RateLimiter = current_app.extensions[EXTENSION]
    caller = g.get("caller")
    client = f"user:{caller.user}" if caller is not None else f"addr:{request.remote_addr}"
    setting, window = LIMITS[name]
    decision = limiter.hit(name, client, getattr(services().settings, setting), window=window)
    if decision.allowed:
        return None
    response, status = error_response(429, "rate_limited", "too many requests: try again in "
                                                           f"{decision.retry_after} seconds")
    response.headers["Retry-After"] = str(decision.retry_after)
    return response, status


def rate_limited(name: str) -> Callable[[F], F]:
    """Decorate a view (inside ``require`` when it has one) with limit ``name``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: object, **kwargs: object) -> object:
            answer = refused(name)
            return answer if answer is not None else view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
