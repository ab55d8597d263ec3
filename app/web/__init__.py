"""HTTP: thin blueprints, one package per feature."""

from __future__ import annotations

from flask import current_app

from app.workflow.services import Services

__all__ = ["Services", "services"]


def services() -> Services:
    """The services of the current app."""
    return current_app.extensions["ebiw"]
