"""Shared by the archive tests: racing retries of one upload, run against either archive."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import select

from app.db.models import Instance
from app.web import Services
from app.workflow.intake import SessionRequest
from tests.conftest import CHARTS


def race_retries_of_one_upload(svc: Services, retries: int = 4) -> list[Instance]:
    """PUT the same photo under one upload UUID from ``retries`` threads at once: none may
    fail and exactly one may report that it stored the photo. The index rows afterwards."""
    session, _ = svc.intake.open_session(
        SessionRequest.from_json({"patient": {"id": "1", "issuer": "H"}}, "H"), "tester")
    data, upload = (CHARTS / "sio_classic.jpg").read_bytes(), str(uuid.uuid4())
    results: list[bool] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(svc.intake.accept_photo(session.id, upload, data)[1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(retries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [False] * (retries - 1) + [True]
    with svc.db.session() as db:
        return list(db.scalars(select(Instance)).all())
