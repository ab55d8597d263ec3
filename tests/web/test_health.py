"""Health and readiness answer without authentication and say what is wrong."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient

from app.factory import create_app


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ok", "checks": {"database": "ok", "archive": "ok"}}


def test_not_ready_when_the_database_is_down(tmp_path: Path) -> None:
    down = create_app({"data_dir": tmp_path, "env": "test",
                       "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    response = down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("failed: ")
