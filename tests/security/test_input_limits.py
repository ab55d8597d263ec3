"""Untrusted input: header check before any decoder on every upload path, body/part/file limits,
OpenCV's own pixel cap in force, stored files never named from user input."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import uuid

import cv2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from tests.conftest import REPO, services
from tests.pipeline.test_decode import png_bomb
from tests.security.conftest import PHOTO


def _huge_jpeg() -> bytes:
    """A valid small JPEG whose frame header claims 30000×30000 pixels."""
    data = bytearray(PHOTO)
    pos = 2
    while True:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[pos + 5:pos + 9] = struct.pack(">HH", 30000, 30000)
            return bytes(data)
        pos += 2 + length


def _huge_tiff() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "TIFF")
    data = bytearray(out.getvalue())
    # patch ImageWidth (256) and ImageLength (257) in the first IFD to 40000
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):
            data[entry + 8:entry + 12] = struct.pack("<I", 40000) if kind == 4 else \
                struct.pack("<HH", 40000, 0)
    return bytes(data)


BOMBS = {"png": png_bomb(), "jpeg": _huge_jpeg(), "tiff": _huge_tiff()}


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if any pixel decoder runs; record which one."""
    called: list[str] = []

    def refuse(name: str):  # type: ignore[no-untyped-def]
        def decoder(*_args: object, **_kwargs: object) -> None:
            called.append(name)
            raise AssertionError(f"{name} ran on an image refused by its header")
        return decoder

    monkeypatch.setattr(cv2, "imdecode", refuse("cv2.imdecode"))
    monkeypatch.setattr(Image.Image, "load", refuse("PIL load"))
    return called


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_every_upload_path_checks_the_header_before_any_decoder(
        client: FlaskClient, auth: dict[str, dict[str, str]], no_decoding: list[str],
        kind: str) -> None:
    data = BOMBS[kind]
    capture = auth["capture"]
    session = client.post("/api/v1/sessions", headers=capture, json={
        "patient": {"id": "1", "issuer": "LOCAL"}}).get_json()["id"]
    answers = [
        client.put(f"/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                   data=data, headers={**capture, "Content-Type": "image/jpeg"}),
        client.post("/api/v1/identify", data=data,
                    headers={**capture, "Content-Type": "application/octet-stream"}),
        client.post("/api/v1/identify", headers=capture,
                    data={"photo": (io.BytesIO(data), "x")},
                    content_type="multipart/form-data"),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.get_json()
        assert answer.get_json()["error"]["code"] == "unreadable_photo"
        assert "too large" in answer.get_json()["error"]["message"]
    assert no_decoding == []


def test_opencv_pixel_cap_is_in_force_whatever_is_imported_first() -> None:
    """OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS when its library loads: importing any pipeline
    module first (identify imports cv2 before decode) must already have set it."""
    script = """
import sys, zlib, struct
first = sys.argv[1]
__import__(first)
import cv2, numpy as np
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
w = h = 10000  # 100 MP: over our 80 MP cap, under OpenCV's own default of 2**30
z = zlib.compressobj(9)
idat = b"".join(z.compress(b"\\0" * (w + 1)) for _ in range(h)) + z.flush()
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
try:
    out = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    print("decoded" if out is not None else "refused")
except cv2.error:
    print("refused")
"""
    for first in ("app.pipeline.identify", "app.pipeline.color", "app.factory"):
        proc = subprocess.run([sys.executable, "-c", script, first], capture_output=True,
                              text=True, cwd=REPO, check=False, timeout=120,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.stdout.strip() == "refused", (first, proc.stdout, proc.stderr[-500:])


def test_multipart_limits(client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    two = client.post("/api/v1/identify", headers=capture,
                      data={"photo": [(io.BytesIO(PHOTO), "a.jpg"), (io.BytesIO(PHOTO), "b.jpg")]},
                      content_type="multipart/form-data")
    assert two.status_code == 422 and "one photo" in two.get_json()["error"]["message"]
    many = client.post("/api/v1/identify", headers=capture,
                       data={f"f{i}": "x" for i in range(40)},
                       content_type="multipart/form-data")
    assert many.status_code == 413
    big_field = client.post("/api/v1/identify", headers=capture,
                            data={"note": "x" * 2_000_000},
                            content_type="multipart/form-data")
    assert big_field.status_code == 413


def test_json_and_form_bodies_are_capped_at_one_mebibyte(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    body = '{"patient": {"id": "1"}, "description": "' + "x" * 1_100_000 + '"}'
    response = client.post("/api/v1/sessions", data=body,
                           headers={**auth["capture"], "Content-Type": "application/json"})
    assert response.status_code == 413
    form = client.post("/fhir/Patient/_search", data={"identifier": "y" * 1_100_000},
                       headers=auth["view"])
    assert form.status_code == 413


def test_stored_files_are_named_by_uids_only(app: Flask, client: FlaskClient,
                                             auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    for bad in ("../../etc/passwd", "..%2F..%2Fx", "a" * 40, "1.2.3"):
        response = client.put(f"/api/v1/sessions/{uuid.uuid4()}/photos/{bad}",
                              data=PHOTO, headers={**capture, "Content-Type": "image/jpeg"})
        assert response.status_code in (404, 422), bad
    session = client.post("/api/v1/sessions", headers=capture, json={
        "patient": {"id": "../../evil", "issuer": "../x"}, "description": "../../evil",
        "worklist_item": {"study_instance_uid": "1.2.3.4"}}).get_json()
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                     data=PHOTO, headers={**capture, "Content-Type": "image/jpeg"})
    assert put.status_code == 201
    bad_uid = client.post("/api/v1/sessions", headers=capture, json={
        "patient": {"id": "2"}, "worklist_item": {"study_instance_uid": "1.2/../../x"}})
    assert bad_uid.status_code == 422
    root = services(app).settings.archive_root
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert names and all(re.fullmatch(r"[0-9.]+/[0-9.]+/[0-9.]+\.dcm", n) for n in names), names
    data_dir = services(app).settings.data_dir
    assert not [p for p in data_dir.rglob("*") if "evil" in p.name or "passwd" in p.name]


def test_text_no_database_can_hold_is_refused_before_it_reaches_one(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    """NUL characters and lone surrogates (PostgreSQL raised DataError: a 500, found by the
    schemathesis run) are refused up front, on SQLite and PostgreSQL alike."""
    capture, view = auth["capture"], auth["view"]
    answers = [
        client.post("/api/v1/patients/search", headers=capture,
                    data='{"mrn": "\\u0000", "issuer": "\\uda6c\\udd80D"}',
                    content_type="application/json"),
        client.post("/api/v1/identify", headers=capture,
                    data='{"barcode": "1234\\u00005678^^^HOSP^MR"}',
                    content_type="application/json"),
        client.post("/api/v1/sessions", headers=capture,
                    data='{"patient": {"id": "1", "name": "A\\udc80"}}',
                    content_type="application/json"),
        client.get("/fhir/Patient?identifier=x%7C%00", headers=view),
        client.post("/fhir/Patient/_search", headers=view, data={"identifier": "x|\x00"}),
        client.get("/dicomweb/studies/1.2%00", headers=view),
        client.get("/dicomweb/studies?PatientID=%00", headers=view),
    ]
    statuses = [a.status_code for a in answers]
    assert all(s in (400, 422) for s in statuses), statuses
