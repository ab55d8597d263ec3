"""HTTP: thin blueprints, one package per feature."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.db.session import Database
from app.gateways.archive import Archive
from app.settings import Settings
from app.workflow.intake import Intake


@dataclass(frozen=True)
class Services:
    """What the blueprints use, built once by ``create_app``."""

    settings: Settings
    db: Database
    archive: Archive
    intake: Intake


def services() -> Services:
    """The services of the current app."""
    return current_app.extensions["ebiw"]
