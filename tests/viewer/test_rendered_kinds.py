"""WADO-RS ``rendered`` and ``thumbnail`` of every kind of stored instance, asked with every
Accept a viewer sends: our photos (JPEG and PNG uploads, stored as JPEG Baseline), their
colour-normalized copies, a video clip, images other devices stored in other Transfer Syntaxes
(a PNG's pixels uncompressed, RLE and JPEG-LS: decoded to render), and the objects without
pixels (a measurement SR, a rejection KOS), which answer 406 saying so."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from app.db.models import Instance
from app.pipeline.dicom.kos import RejectionReason
from app.pipeline.render import UnrenderableError, image_frame
from app.workflow.corrections import reject
from app.workflow.demo import seed_demo_patients
from tests.clips import PHOTO as WOUND_PNG
from tests.clips import make_clip
from tests.conftest import services
from tests.devices.conftest import stow_body, vl_photo
from tests.viewer.conftest import CHART, FOREARM, PATIENT, StoredStudy, photo, store_derived

ACCEPTS = ("image/jpeg", "image/png", "*/*", None)
EXPECTED_TYPE = {"image/jpeg": "image/jpeg", "image/png": "image/png", "*/*": "image/jpeg",
                 None: "image/jpeg"}
DEVICE_SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless)


def _wound_rgb() -> np.ndarray:
    return np.asarray(Image.open(WOUND_PNG).convert("RGB"))


def device_image(transfer_syntax: str) -> bytes:
    """A VL Photographic Image as a device that took a PNG sends it: the PNG's pixels, 8-bit
    RGB, in ``transfer_syntax`` (uncompressed, or compressed losslessly by pydicom)."""
    ds = pydicom.dcmread(io.BytesIO(vl_photo()))
    rgb = _wound_rgb()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = rgb.tobytes()
    ds["PixelData"].VR = "OB"
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, rgb)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _put(client: FlaskClient, headers: dict[str, str], session: str, data: bytes,
         content_type: str | None = None) -> dict[str, str]:
    extra = {"Content-Type": content_type} if content_type else {}
    response = client.put(f"/api/v1/sessions/{session}/photos/{uuid.uuid4()}", data=data,
                          headers={**headers, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def kinds(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
          tmp_path: Path) -> dict[str, str]:
    """The instance URL of every kind, by kind."""
    capture = auth["capture"]
    body = {"patient": PATIENT, "encounter": "ENC1001", "body_site": FOREARM,
            "laterality": "L", "department": "Wound care"}
    session = client.post("/api/v1/sessions", json=body, headers=capture).get_json()
    jpeg = _put(client, capture, session["id"], photo(CHART))
    _, png = cv2.imencode(".png", cv2.imread(str(WOUND_PNG)))
    uploaded_png = _put(client, capture, session["id"], png.tobytes())
    doomed = _put(client, capture, session["id"], photo(CHART)[:-2] + b"\xff\xd9")
    clip = _put(client, capture, session["id"],
                make_clip(tmp_path / "clip.mp4").read_bytes(), "video/mp4")
    assert client.post(f"/api/v1/sessions/{session['id']}/complete",
                       headers=capture).status_code == 200
    study = session["study_instance_uid"]
    derived = store_derived(app, StoredStudy(study, jpeg["series_instance_uid"],
                                             [jpeg["sop_instance_uid"]]),
                            spacing_mm=None, report="normalized for the test")
    measured = client.post(f"/api/v1/studies/{study}/measurements", headers=auth["view"],
                           json={"instance": jpeg["sop_instance_uid"], "wound": "Ulcer",
                                 "lines": [{"points": [[200, 300], [1300, 1000]],
                                            "kind": "length"}]})
    assert measured.status_code == 201, measured.get_json()
    kos = reject(services(app), doomed["sop_instance_uid"], RejectionReason.QUALITY,
                 actor="admin")

    def url(series: str, sop: str, at: str = study) -> str:
        return f"/dicomweb/studies/{at}/series/{series}/instances/{sop}"

    def by_sop(sop: str) -> str:  # the series of an SR or a KOS: as the archive has it
        with services(app).db.session() as db:
            stored = db.get(Instance, sop)
            assert stored is not None
            return url(stored.series_uid, sop, stored.study_uid)

    urls = {"jpeg photo": url(jpeg["series_instance_uid"], jpeg["sop_instance_uid"]),
            "png photo": url(uploaded_png["series_instance_uid"],
                             uploaded_png["sop_instance_uid"]),
            "normalized copy": url(derived.derived_series or "", derived.derived[0][0]),
            "video clip": url(clip["series_instance_uid"], clip["sop_instance_uid"]),
            "measurement sr": by_sop(measured.get_json()["sr_sop_instance_uid"]),
            "rejection kos": by_sop(kos.kos_sop_uid)}
    seed_demo_patients(services(app).db, "LOCAL")
    for syntax in DEVICE_SYNTAXES:
        stow, content_type = stow_body(device_image(syntax))
        stored = client.post("/dicomweb/studies", data=stow,
                             headers={**capture, "Content-Type": content_type})
        assert stored.status_code == 200, stored.get_json()
        ref = stored.get_json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        urls[f"device {syntax.name}"] = "/dicomweb" + ref.split("/dicomweb", 1)[1]
    return urls


IMAGES = ("jpeg photo", "png photo", "normalized copy", "video clip",
          *(f"device {s.name}" for s in DEVICE_SYNTAXES))


def test_every_image_kind_renders_for_every_accept(client: FlaskClient,
                                                   auth: dict[str, dict[str, str]],
                                                   kinds: dict[str, str]) -> None:
    failures = []
    for kind in IMAGES:
        for resource in ("rendered", "thumbnail"):
            for accept in ACCEPTS:
                headers = {**auth["view"], **({"Accept": accept} if accept else {})}
                got = client.get(f"{kinds[kind]}/{resource}", headers=headers)
                expected = EXPECTED_TYPE[accept]
                if kind == "video clip" and resource == "rendered" and accept in ("*/*", None):
                    expected = "video/mp4"  # the clip as recorded comes first (README)
                if got.status_code != 200 or got.mimetype != expected:
                    failures.append((kind, resource, accept, got.status_code, got.mimetype))
                    continue
                if expected == "video/mp4":
                    continue
                image = Image.open(io.BytesIO(got.data))
                assert image.format == expected.split("/")[1].upper()
                if resource == "thumbnail":
                    assert max(image.size) == 256
    assert failures == []


@pytest.mark.parametrize("syntax", DEVICE_SYNTAXES, ids=lambda s: s.name)
def test_a_device_image_renders_its_own_pixels(
        client: FlaskClient, auth: dict[str, dict[str, str]], kinds: dict[str, str],
        syntax: pydicom.uid.UID) -> None:
    url = kinds[f"device {syntax.name}"]
    png = client.get(f"{url}/rendered", headers={**auth["view"], "Accept": "image/png"})
    assert png.status_code == 200
    rendered = np.asarray(Image.open(io.BytesIO(png.data)).convert("RGB"))
    assert np.array_equal(rendered, _wound_rgb())  # lossless in, lossless out, full size
    jpeg = client.get(f"{url}/rendered?viewport=200,200", headers=auth["view"])
    small = np.asarray(Image.open(io.BytesIO(jpeg.data)).convert("RGB"), dtype=float)
    expected = cv2.resize(_wound_rgb(), (small.shape[1], small.shape[0]),
                          interpolation=cv2.INTER_AREA).astype(float)
    assert max(small.shape[:2]) == 200 and np.abs(small - expected).mean() < 3.0


@pytest.mark.parametrize("kind", ["measurement sr", "rejection kos"])
@pytest.mark.parametrize("resource", ["rendered", "thumbnail"])
def test_objects_without_pixels_say_they_have_no_rendering(
        client: FlaskClient, auth: dict[str, dict[str, str]], kinds: dict[str, str],
        kind: str, resource: str) -> None:
    for accept in ACCEPTS:
        headers = {**auth["view"], **({"Accept": accept} if accept else {})}
        got = client.get(f"{kinds[kind]}/{resource}", headers=headers)
        assert got.status_code == 406, (accept, got.status_code)
        error = got.get_json()["error"]
        assert error["code"] == "not_an_image" and "not an image" in error["message"]


def test_a_device_image_over_the_pixel_cap_is_not_decoded() -> None:
    data = device_image(ExplicitVRLittleEndian)
    with pytest.raises(UnrenderableError, match="too large"):
        image_frame(data, max_pixels=10_000)
    assert image_frame(data).frame.shape[2] == 3
