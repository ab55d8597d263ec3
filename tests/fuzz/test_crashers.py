"""What the fuzz harnesses found, kept as regression tests: each input is a real instance (or a
real multipart body) with the one damage a crasher had, and each reader must refuse it with its
own error (a clear 4xx over HTTP, or a skipped file), never raise anything else or answer 5xx.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.tag import Tag

from app.gateways.archive import InstanceKey
from app.gateways.archive.morph import Morph, MorphRule
from app.gateways.errors import PermanentError
from app.pipeline.dicom.builder import VL_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.dicom.deid import NotDeidentifiable, Pseudonyms, deidentify
from app.pipeline.dicom.read import UnreadableDicomError
from app.pipeline.render import stored_frame
from app.web.dicomweb.index import read_header
from tests.conftest import services
from tests.fuzz.seeds import dicom_seeds

PIXEL_REPRESENTATION = b"(\x00\x03\x01US\x02\x00\x00\x00"  # (0028,0103) US, 2 bytes: 0
JPEG_BASELINE = b"1.2.840.10008.1.2.4.50"


class OneFile:
    """An archive holding one file."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, _row: object) -> bytes:
        return self.data


def damaged(old: bytes, new: bytes) -> bytes:
    """The original seed instance with ``old`` (found exactly once) replaced by ``new``."""
    original = dicom_seeds()["original.dcm"]
    assert original.count(old) == 1
    return original.replace(old, new)


ODD_LENGTH = damaged(PIXEL_REPRESENTATION, b"(\x00\x03\x01US\x03\x00\x00\x00\x00")
"""An unsigned short of 3 bytes: pydicom's BytesLengthException (not a ValueError) once the
value is parsed, which the index's header reader let through (every QIDO touching it: 500)."""
UNKNOWN_SYNTAX = damaged(JPEG_BASELINE, b"1.2.840.10008.1.2.4.99")
"""A Transfer Syntax pydicom cannot write: a plain ValueError out of de-identification and tag
morphing, which their callers do not take for a refusal."""
UNKNOWN_VR = damaged(b"\x08\x000\x10LO", b"\x08\x000\x10Lc")
"""Study Description with the VR 'Lc': pydicom decodes a value only when it is first read, so
the morphing rule that read it got a NotImplementedError, which its caller did not take for a
refusal (CI's atheris run, 2026-12-06)."""
MORPH = Morph((MorphRule("set", Tag("InstitutionName"), "Fuzz Hospital"),
               MorphRule("prefix", Tag("StudyDescription"), "FUZZ ")))


def test_the_header_reader_refuses_a_damaged_value() -> None:
    with pytest.raises(UnreadableDicomError):
        read_header(OneFile(ODD_LENGTH), None)  # type: ignore[arg-type]
    body, syntax = read_header(OneFile(dicom_seeds()["original.dcm"]), None)  # type: ignore[arg-type]
    assert syntax == JPEG_BASELINE.decode() and body["00280103"]["Value"] == [0]


@pytest.mark.parametrize("data", [ODD_LENGTH, UNKNOWN_SYNTAX], ids=["odd-length", "syntax"])
def test_deidentification_refuses_damaged_objects(data: bytes) -> None:
    with pytest.raises(NotDeidentifiable):
        deidentify(data, Pseudonyms(b"k" * 32), retain_dates=False)


@pytest.mark.parametrize("data", [UNKNOWN_SYNTAX, UNKNOWN_VR], ids=["syntax", "vr"])
def test_tag_morphing_refuses_an_object_it_cannot_read_or_write_back(data: bytes) -> None:
    with pytest.raises(PermanentError):
        MORPH.apply(data)
    morphed = MORPH.apply(dicom_seeds()["original.dcm"])
    assert b"Fuzz Hospital" in morphed and b"FUZZ Clinical pho" in morphed


def test_the_frame_reader_refuses_a_file_without_pixel_data() -> None:
    header_only = dicom_seeds()["original.dcm"].split(b"\xe0\x7f\x10\x00")[0]
    with pytest.raises(UnreadableDicomError):
        stored_frame(header_only)
    assert stored_frame(dicom_seeds()["original.dcm"]).frame.startswith(b"\xff\xd8")


def test_qido_skips_a_damaged_archive_file(app: Flask, client: FlaskClient,
                                           auth: dict[str, dict[str, str]]) -> None:
    svc = services(app)
    for study, data in (("2.25.1", dicom_seeds()["original.dcm"]), ("2.25.91", ODD_LENGTH)):
        with svc.db.session() as db:
            svc.archive.store(db, InstanceKey(study, f"{study}.2", f"{study}.3",
                                              VL_PHOTOGRAPHIC_IMAGE_STORAGE), data)
    answer = client.get("/dicomweb/studies", headers=auth["admin"])
    assert answer.status_code == 200, answer.data
    assert [s["0020000D"]["Value"] for s in answer.get_json()] == [["2.25.1"]]


@pytest.mark.parametrize(("route", "status"), [("/api/v1/identify", 422), ("/login", 401)])
def test_a_form_part_without_a_name_is_refused_not_a_server_error(
        client: FlaskClient, auth: dict[str, dict[str, str]], route: str, status: int) -> None:
    """werkzeug gives a part whose Content-Disposition has no name the key None: the request
    guard's NUL check failed on it (500 on every form post, before authentication)."""
    body = (b"--b\r\nContent-Disposition: form-data\r\n\r\nabc\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\nnot a photo\r\n--b--\r\n")
    answer = client.post(route, data=body, headers={
        **auth["capture"], "Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == status, answer.data  # the photo is unreadable; no login
    if route == "/api/v1/identify":
        assert answer.get_json()["error"]["code"] == "unreadable_photo"
