"""ebiw-capture: encounter-based visible-light imaging.

``create_app`` is imported lazily so that importing ``app.pipeline`` stays free of Flask and
the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI application (see :mod:`app.factory`)."""
    from app.factory import create_app as build

    return build(overrides)
