"""Body limits hold for streamed bodies (``Transfer-Encoding: chunked``, no ``Content-Length``)
as for declared ones, on every body-reading route, under werkzeug and under gunicorn: one byte
past the limit is 413 and nothing is stored; a body under the limit is stored whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select

from app.db.models import BatchItem, Instance, Photo
from tests.conftest import REPO, served, services
from tests.security.conftest import PHOTO
from tests.test_serve import free_port, wait_for

LIMIT = 1024 * 1024
"""EBIW_MAX_UPLOAD_BYTES here (JSON and forms are capped at 1 MiB too)."""


@pytest.fixture
def app_overrides() -> dict[str, object]:
    return {"max_upload_bytes": LIMIT}


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``data`` as a generator: requests sends it chunked, with no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def padded(total: int) -> bytes:
    """The test photo followed by zeros up to ``total`` bytes (still a readable JPEG)."""
    return PHOTO + bytes(total - len(PHOTO))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("ebiw.sqlite3")}


def stored_rows(app: Flask) -> tuple[int, int, int]:
    with services(app).db.session() as db:
        return tuple(db.scalar(select(func.count()).select_from(model))  # type: ignore[return-value]
                     for model in (Photo, Instance, BatchItem))


def test_streamed_bodies_past_the_limit_are_refused_on_every_route_and_nothing_is_stored(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    too_big = padded(LIMIT + 1)
    with served(app) as url:
        session = requests.post(f"{url}/api/v1/sessions", headers=capture, timeout=30, json={
            "patient": {"id": "1", "issuer": "LOCAL"}}).json()["id"]
        batch = requests.post(f"{url}/api/v1/batches", headers=capture, json={},
                              timeout=30).json()["id"]
        before = files_under(services(app).settings.data_dir)
        jpeg = {**capture, "Content-Type": "image/jpeg"}
        octets = {**capture, "Content-Type": "application/octet-stream"}
        form_body = b"identifier=" + b"y" * LIMIT
        json_body = b'{"patient": {"id": "1"}, "description": "' + b"x" * LIMIT + b'"}'
        multipart = (b"--B\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a\"\r\n"
                     b"Content-Type: image/jpeg\r\n\r\n" + too_big + b"\r\n--B--\r\n")
        answers = {
            "photo": requests.put(f"{url}/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                                  data=chunked(too_big), headers=jpeg, timeout=60),
            "identify raw": requests.post(f"{url}/api/v1/identify", data=chunked(too_big),
                                          headers=octets, timeout=60),
            "identify multipart": requests.post(
                f"{url}/api/v1/identify", data=chunked(multipart), timeout=60,
                headers={**capture, "Content-Type": "multipart/form-data; boundary=B"}),
            "batch item": requests.put(f"{url}/api/v1/batches/{batch}/items/{uuid.uuid4()}",
                                       data=chunked(too_big), headers=jpeg, timeout=60),
            "json": requests.post(f"{url}/api/v1/sessions", data=chunked(json_body),
                                  headers={**capture, "Content-Type": "application/json"},
                                  timeout=60),
            "form": requests.post(f"{url}/fhir/Patient/_search", data=chunked(form_body),
                                  timeout=60, headers={
                                      **auth["view"],
                                      "Content-Type": "application/x-www-form-urlencoded"}),
        }
    for route, answer in answers.items():
        assert answer.request.headers.get("Transfer-Encoding") == "chunked", route
        assert "Content-Length" not in answer.request.headers, route
        assert answer.status_code == 413, (route, answer.status_code, answer.text[:200])
        assert "too large" in answer.text.lower(), (route, answer.text[:200])
    assert stored_rows(app) == (0, 0, 0)
    assert files_under(services(app).settings.data_dir) == before


def test_a_streamed_photo_up_to_the_limit_is_stored_whole(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    capture = {**auth["capture"], "Content-Type": "image/jpeg"}
    body = padded(LIMIT)
    with served(app) as url:
        session = requests.post(f"{url}/api/v1/sessions", headers=auth["capture"], timeout=30,
                                json={"patient": {"id": "1", "issuer": "LOCAL"}}).json()["id"]
        answer = requests.put(f"{url}/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                              data=chunked(body), headers=capture, timeout=120)
    assert answer.status_code == 201, answer.text[:300]
    assert answer.json()["size"] == LIMIT
    assert answer.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_the_same_bodies_with_a_content_length_get_413_too(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    with served(app) as url:
        answer = requests.post(f"{url}/api/v1/identify", data=padded(LIMIT + 1), timeout=60,
                               headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert answer.request.headers["Content-Length"] == str(LIMIT + 1)
    assert answer.status_code == 413


def test_gunicorn_refuses_a_streamed_photo_past_the_limit(tmp_path: Path) -> None:
    """The deployed server (``ebiw serve``: gunicorn, gthread) sets ``wsgi.input_terminated``
    and dechunks: the limit must hold there as well."""
    port = free_port()
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var"), "EBIW_WORKERS": "1",
           "EBIW_MAX_UPLOAD_BYTES": str(LIMIT)}
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    token = subprocess.run([sys.executable, "-m", "app.cli", "token", "create", "--user", "cam",
                            "--role", "capture"], cwd=REPO, env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, proc, log)
        session = requests.post(f"{url}/api/v1/sessions", headers=headers, timeout=30, json={
            "patient": {"id": "1", "issuer": "LOCAL"}}).json()["id"]
        jpeg = {**headers, "Content-Type": "image/jpeg"}
        over = requests.put(f"{url}/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                            data=chunked(padded(LIMIT + 1)), headers=jpeg, timeout=60)
        under = requests.put(f"{url}/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                             data=chunked(padded(LIMIT)), headers=jpeg, timeout=120)
        photos = requests.get(f"{url}/api/v1/sessions/{session}", headers=headers,
                              timeout=30).json()["photos"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert over.status_code == 413, over.text[:300]
    assert under.status_code == 201, under.text[:300]
    assert under.json()["sha256"] == hashlib.sha256(padded(LIMIT)).hexdigest()
    assert [p["upload_uuid"] for p in photos] == [under.json()["upload_uuid"]]
