"""Photo bodies as people send them: no Content-Type, curl's form default, octet-stream, or the
photo's own type are photos; other declared types and non-images with a generic type are 415
naming the header; a normal photo is never 413."""

from __future__ import annotations

import hashlib
import uuid

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BARCODES, CHARTS, services
from tests.web.test_api import counts, open_session

PHOTO = (CHARTS / "oycq_data_iphone.jpg").read_bytes()  # 2.6 MB: over the 1 MiB form cap
PNG = (BARCODES / "zx_code128-2_05.png").read_bytes()
GENERIC = [None, "application/x-www-form-urlencoded", "application/octet-stream"]


def _put(client: FlaskClient, headers: dict[str, str], session: str, data: bytes,
         content_type: str | None) -> tuple[int, dict]:
    extra = {"Content-Type": content_type} if content_type is not None else {}
    response = client.put(f"/api/v1/sessions/{session}/photos/{uuid.uuid4()}", data=data,
                          headers={**headers, **extra})
    return response.status_code, response.get_json()


@pytest.mark.parametrize("content_type", GENERIC, ids=["none", "curl-form-default", "octet"])
def test_a_photo_with_a_generic_type_is_stored(app: Flask, client: FlaskClient,
                                               auth: dict[str, dict[str, str]],
                                               content_type: str | None) -> None:
    assert len(PHOTO) > 1024 * 1024
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, PHOTO, content_type)
    assert status == 201, body
    assert body["sha256"] == hashlib.sha256(PHOTO).hexdigest()
    assert body["media_type"] == "image/jpeg"
    path = services(app).settings.archive_root.rglob(f"{body['sop_instance_uid']}.dcm")
    assert pydicom.dcmread(next(path)).SOPInstanceUID == body["sop_instance_uid"]


def test_a_png_with_curls_default_type_is_stored_as_png(client: FlaskClient,
                                                         auth: dict[str, dict[str, str]]) -> None:
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, PNG,
                        "application/x-www-form-urlencoded")
    assert status == 201, body
    assert body["media_type"] == "image/png"


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "video/mp4"])
def test_another_declared_type_is_415_naming_the_header(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        content_type: str) -> None:
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, PHOTO, content_type)
    assert status == 415, body
    assert body["error"]["code"] == "unsupported_media_type"
    assert f"Content-Type {content_type}" in body["error"]["message"]
    assert "image/jpeg" in body["error"]["message"]
    assert counts(app) == (0, 0, 0)


@pytest.mark.parametrize("content_type", GENERIC, ids=["none", "curl-form-default", "octet"])
def test_a_non_image_with_a_generic_type_is_415(app: Flask, client: FlaskClient,
                                                auth: dict[str, dict[str, str]],
                                                content_type: str | None) -> None:
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, b"<html>not a photo</html>" * 100,
                        content_type)
    assert status == 415, body
    assert "Content-Type" in body["error"]["message"]
    assert counts(app) == (0, 0, 0)


def test_a_declared_photo_that_is_not_one_is_still_422(app: Flask, client: FlaskClient,
                                                       auth: dict[str, dict[str, str]]) -> None:
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, b"GIF89a junk", "image/jpeg")
    assert status == 422, body
    assert body["error"]["code"] == "unreadable_photo"


def test_the_upload_limit_still_holds_for_generic_types(app: Flask, client: FlaskClient,
                                                        auth: dict[str, dict[str, str]]) -> None:
    app.config["MAX_CONTENT_LENGTH"] = len(PHOTO) - 1
    session = open_session(client, auth["capture"])["id"]
    status, _body = _put(client, auth["capture"], session, PHOTO,
                         "application/x-www-form-urlencoded")
    assert status == 413
    assert counts(app) == (0, 0, 0)


def test_identify_and_batch_read_a_generic_body_as_a_photo(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    identify = client.post("/api/v1/identify", data=PNG,
                           headers={**capture, "Content-Type": "application/x-www-form-urlencoded"})
    # read as a photo: the wristband's MRN is decoded (no such patient in an empty index)
    assert identify.status_code == 404, identify.get_json()
    assert identify.get_json()["identifiers"][0]["mrn"] == "15182881"
    batch = client.post("/api/v1/batches", json={}, headers=capture)
    assert batch.status_code == 201, batch.get_json()
    held = client.put(f"/api/v1/batches/{batch.get_json()['id']}/items/{uuid.uuid4()}",
                      data=PHOTO, headers=capture)
    assert held.status_code == 201, held.get_json()
    assert held.get_json()["media_type"] == "image/jpeg"
