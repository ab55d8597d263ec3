"""DICOMweb conformance of the local archive: QIDO-RS matching, WADO-RS retrieve, audit trail.

Studies come from the app's intake (real photos through the API) plus derived and earlier
instances built as the colour step and earlier visits would; the client side is both a strict
hand-written check and dicomweb-client against a real server on a free port.
"""

from __future__ import annotations

import hashlib
import io
import logging
from datetime import UTC, datetime

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from app.db.models import AuditEvent, Instance
from app.durable import write_durably
from app.pipeline.decode import strip_jpeg
from app.pipeline.render import THUMBNAIL_BOX
from app.workflow import audit
from tests.conftest import services
from tests.viewer.conftest import (
    OTHER_PATIENT,
    PATIENT,
    StoredStudy,
    as_file,
    parse_multipart,
    photo,
    size_of,
    store_earlier_study,
    upload_study,
)


def _value(ds: dict, tag: str) -> object:
    return (ds.get(tag, {}).get("Value") or [None])[0]


def _files(app: Flask, study_uid: str) -> dict[str, bytes]:
    """The stored Part 10 bytes of a study, by SOP Instance UID."""
    svc = services(app)
    with svc.db.session() as db:
        rows = db.scalars(select(Instance).where(Instance.study_uid == study_uid)).all()
        return {r.sop_uid: svc.archive.path(r).read_bytes() for r in rows}


@pytest.fixture
def archive(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
            chart_study: StoredStudy) -> dict[str, StoredStudy]:
    """Today's chart study, two earlier ones of the same patient, one of another patient."""
    return {
        "today": chart_study,
        "2024": store_earlier_study(app, photo("jtvd_classic_01.jpg"),
                                    datetime(2024, 3, 5, 10, 0, tzinfo=UTC)),
        "2025": store_earlier_study(app, photo("jtvd_classic_02.jpg"),
                                    datetime(2025, 6, 1, 9, 30, tzinfo=UTC)),
        "other": upload_study(client, auth["capture"], [photo("jtvd_classic_03.jpg")],
                              patient=OTHER_PATIENT),
    }


def _studies(client: FlaskClient, headers: dict[str, str], query: str) -> list[dict]:
    response = client.get(f"/dicomweb/studies?{query}", headers=headers)
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "application/dicom+json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_json()


def test_qido_studies_match_patient_dates_modality_and_page(
        client: FlaskClient, auth: dict[str, dict[str, str]],
        archive: dict[str, StoredStudy]) -> None:
    view = auth["view"]
    mine = _studies(client, view, "PatientID=00123456")
    assert [_value(s, "0020000D") for s in mine] == [
        archive[k].study_uid for k in ("today", "2025", "2024")]  # newest first
    today = mine[0]
    required = ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010",
                "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                "00201208", "00081190")
    assert all(tag in today for tag in required)
    assert today["00080061"]["Value"] == ["XC"]
    assert (_value(today, "00201206"), _value(today, "00201208")) == (2, 4)
    assert today["00100010"]["Value"] == [{"Alphabetic": "DEMO^ALICE"}]
    assert _value(today, "00081190").endswith(f"/dicomweb/studies/{archive['today'].study_uid}")

    def uids(query: str) -> set[str]:
        return {_value(s, "0020000D") for s in _studies(client, view, query)}

    assert uids("PatientID=00123456&StudyDate=20240101-20241231") == {archive["2024"].study_uid}
    assert uids("PatientID=00123456&StudyDate=-20251231") == {archive["2024"].study_uid,
                                                              archive["2025"].study_uid}
    assert uids("StudyDate=20250601") == {archive["2025"].study_uid}
    assert uids("StudyDate=20250602-") == {archive["today"].study_uid,
                                           archive["other"].study_uid}
    assert len(uids("ModalitiesInStudy=XC")) == 4
    assert uids("ModalitiesInStudy=CT,MR") == set()
    assert uids("PatientName=demo^a*") == uids("PatientID=00123456")
    assert uids("PatientID=0012345?") == uids("PatientID=00123456")
    assert uids("PatientID=00123456&00100021=HOSP-A") == uids("PatientID=00123456")
    assert uids(f"StudyInstanceUID={archive['2024'].study_uid},{archive['other'].study_uid}") \
        == {archive["2024"].study_uid, archive["other"].study_uid}
    assert uids("PatientID=") == uids("")  # empty value: universal matching

    first = client.get("/dicomweb/studies?PatientID=00123456&limit=1&offset=1", headers=view)
    assert [_value(s, "0020000D") for s in first.get_json()] == [archive["2025"].study_uid]
    assert "additional results" in first.headers["Warning"]
    last = client.get("/dicomweb/studies?PatientID=00123456&limit=1&offset=2", headers=view)
    assert "Warning" not in last.headers

    included = _studies(client, view, "PatientID=00123456&includefield=AdmissionID")
    assert _value(included[0], "00380010") == "ENC1001"
    everything = _studies(client, view, "PatientID=00123456&includefield=all")
    assert "00380010" in everything[0] and "00280010" not in everything[0]  # study level only


def test_related_instances_find_the_patients_studies_without_a_patient_id_in_the_url(
        client: FlaskClient, auth: dict[str, dict[str, str]],
        archive: dict[str, StoredStudy]) -> None:
    view = auth["view"]
    url = f"/dicomweb/studies/{archive['today'].study_uid}/related/instances"
    found = client.get(f"{url}?includefield=0020000D", headers=view)
    assert found.status_code == 200 and found.content_type == "application/dicom+json"
    studies = {_value(i, "0020000D") for i in found.get_json()}
    assert studies == {archive[k].study_uid for k in ("today", "2024", "2025")}
    other = client.get(f"/dicomweb/studies/{archive['other'].study_uid}/related/instances",
                       headers=view).get_json()
    assert {_value(i, "0020000D") for i in other} == {archive["other"].study_uid}
    assert client.get("/dicomweb/studies/2.25.1/related/instances", headers=view
                      ).status_code == 404
    assert client.get(url).status_code == 401


def test_qido_series_and_instances(client: FlaskClient, auth: dict[str, dict[str, str]],
                                   archive: dict[str, StoredStudy]) -> None:
    view, study = auth["view"], archive["today"]
    series = client.get(f"/dicomweb/studies/{study.study_uid}/series", headers=view).get_json()
    assert [_value(s, "0020000E") for s in series] == [study.original_series,
                                                       study.derived_series]
    assert [_value(s, "00201209") for s in series] == [2, 2]
    assert {_value(s, "00080060") for s in series} == {"XC"}
    only = client.get(f"/dicomweb/studies/{study.study_uid}/series?SeriesNumber=2",
                      headers=view).get_json()
    assert [_value(s, "0020000E") for s in only] == [study.derived_series]

    url = f"/dicomweb/studies/{study.study_uid}/series/{study.original_series}/instances"
    instances = client.get(url, headers=view).get_json()
    assert [_value(i, "00080018") for i in instances] == study.originals
    assert [(_value(i, "00280011"), _value(i, "00280010")) for i in instances] == [
        (1600, 1200), (4032, 3024)]
    assert all(_value(i, "00080016") == "1.2.840.10008.5.1.4.1.1.77.1.4" for i in instances)
    everything = client.get(f"/dicomweb/studies/{study.study_uid}/instances",
                            headers=view).get_json()
    assert len(everything) == 4
    derived = client.get(f"/dicomweb/studies/{study.study_uid}/instances?ImageType=DERIVED"
                         "&includefield=00082111,00082112", headers=view).get_json()
    assert {_value(i, "00080018") for i in derived} == {d for d, _ in study.derived}
    assert all("00082112" in i and "00082111" in i for i in derived)

    timeline = client.get("/dicomweb/instances?PatientID=00123456&IssuerOfPatientID=HOSP-A"
                          "&includefield=AnatomicRegionSequence&includefield=ImageLaterality",
                          headers=view).get_json()
    assert len(timeline) == 6
    assert {i["00082218"]["Value"][0]["00080100"]["Value"][0] for i in timeline} == {
        "14975008"}
    all_series = client.get("/dicomweb/series?Modality=XC&PatientID=00999999",
                            headers=view).get_json()
    assert [_value(s, "0020000D") for s in all_series] == [archive["other"].study_uid]
    assert "00100020" in all_series[0]  # all-series results carry the study's keys


@pytest.mark.parametrize(("query", "status"), [
    ("StudyDate=2024", 400), ("StudyDate=20240101-20240132x", 400), ("limit=-1", 400),
    ("offset=x", 400), ("StudyInstanceUID=1.2.abc", 400), ("SeriesNumber=one", 400),
    ("AnatomicRegionSequence.CodeValue=1", 400),
])
def test_qido_refuses_malformed_values_without_echoing_them(
        client: FlaskClient, auth: dict[str, dict[str, str]], query: str, status: int) -> None:
    response = client.get(f"/dicomweb/studies?PatientID=00123456&{query}",
                          headers=auth["view"])
    assert response.status_code == status
    assert "00123456" not in response.get_data(as_text=True)
    value = query.split("=", 1)[1]
    assert value not in response.get_json()["error"]["message"]


def test_dicomweb_needs_a_role_and_acceptable_media(
        client: FlaskClient, auth: dict[str, dict[str, str]], chart_study: StoredStudy) -> None:
    study = chart_study.study_uid
    for url in ("/dicomweb/studies", f"/dicomweb/studies/{study}/metadata",
                f"/dicomweb/studies/{study}/thumbnail", f"/dicomweb/studies/{study}"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer ebiw_nope"}).status_code == 401
    assert client.get("/dicomweb/studies", headers=auth["capture"]).status_code == 200
    not_json = client.get("/dicomweb/studies", headers={**auth["view"],
                                                        "Accept": "application/xml"})
    assert not_json.status_code == 406
    uncompressed = client.get(f"/dicomweb/studies/{study}", headers={
        **auth["view"], "Accept": 'multipart/related; type="application/dicom"; '
                                  "transfer-syntax=1.2.840.10008.1.2.1"})
    assert uncompressed.status_code == 406  # no transcoding of lossy photos
    assert client.get("/dicomweb/studies/1.2.3/metadata", headers=auth["view"]).status_code \
        == 404


def test_wado_instances_are_the_stored_bytes(app: Flask, client: FlaskClient,
                                             auth: dict[str, dict[str, str]],
                                             chart_study: StoredStudy) -> None:
    files = _files(app, chart_study.study_uid)
    for url, expected in [
        (f"/dicomweb/studies/{chart_study.study_uid}", set(files)),
        (f"/dicomweb/studies/{chart_study.study_uid}/series/{chart_study.original_series}",
         set(chart_study.originals)),
        (f"/dicomweb/studies/{chart_study.study_uid}/series/{chart_study.original_series}"
         f"/instances/{chart_study.originals[1]}", {chart_study.originals[1]}),
    ]:
        response = client.get(url, headers={
            **auth["view"], "Accept": 'multipart/related; type="application/dicom"'})
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.content_type.startswith('multipart/related; type="application/dicom"')
        parts = parse_multipart(response.content_type, response.get_data())
        got = {as_file(data).SOPInstanceUID: data for _, data in parts}
        assert set(got) == expected
        for uid, data in got.items():
            assert data == files[uid]  # byte for byte
        assert {h["Content-Type"] for h, _ in parts} == {
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"}


def test_dicomweb_client_round_trip(app: Flask, live_server: str,
                                    auth: dict[str, dict[str, str]],
                                    chart_study: StoredStudy) -> None:
    dw = DICOMwebClient(url=f"{live_server}/dicomweb", headers=auth["view"])
    study, series = chart_study.study_uid, chart_study.original_series
    phone_uid = chart_study.originals[1]
    found = dw.search_for_studies(search_filters={"PatientID": PATIENT["id"]})
    assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in found] == [study]
    assert len(dw.search_for_instances(study, series)) == 2

    files = _files(app, study)
    stored = as_file(files[phone_uid])
    metadata = dw.retrieve_instance_metadata(study, series, phone_uid)
    bulk_uris = {tag: element["BulkDataURI"] for tag, element in metadata.items()
                 if "BulkDataURI" in element}
    assert set(bulk_uris) == {"00282000", "7FE00010"}
    parsed = pydicom.Dataset.from_json(metadata, bulk_data_uri_handler=lambda *_: b"")
    for element in stored:
        if element.tag in (0x00282000, 0x7FE00010):
            continue
        assert parsed[element.tag].value == element.value, element.keyword
    assert parsed.AvailableTransferSyntaxUID == "1.2.840.10008.1.2.4.50"

    (icc,) = dw.retrieve_bulkdata(bulk_uris["00282000"])
    assert icc == stored.ICCProfile
    frame = next(pydicom.encaps.generate_frames(stored.PixelData, number_of_frames=1))
    (pixels,) = dw.retrieve_bulkdata(bulk_uris["7FE00010"], media_types=("image/jpeg",))
    assert pixels == frame
    (frame1,) = dw.retrieve_instance_frames(study, series, phone_uid, [1],
                                            media_types=(("application/octet-stream", "*"),))
    assert frame1 == frame

    instance = dw.retrieve_instance(study, series, phone_uid)
    assert instance.SOPInstanceUID == phone_uid and instance.PixelData == stored.PixelData
    study_metadata = dw.retrieve_study_metadata(study)
    assert len(study_metadata) == 4
    assert len(list(dw.retrieve_study(study))) == 4

    png = dw.retrieve_instance_rendered(study, series, phone_uid, media_types=("image/png",),
                                        params={"viewport": "320,320"})
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert size_of(png) == (320, 240)


def test_rendered_and_thumbnails(app: Flask, live_server: str, auth: dict[str, dict[str, str]],
                                 chart_study: StoredStudy) -> None:
    study, series = chart_study.study_uid, chart_study.original_series
    phone_uid = chart_study.originals[1]
    base = f"{live_server}/dicomweb/studies/{study}/series/{series}/instances/{phone_uid}"
    stored = as_file(_files(app, study)[phone_uid])
    frame = next(pydicom.encaps.generate_frames(stored.PixelData, number_of_frames=1))

    def get(url: str, accept: str = "image/jpeg") -> requests.Response:
        response = requests.get(url, headers={**auth["view"], "Accept": accept}, timeout=30)
        assert response.status_code == 200, response.text
        return response

    for viewport, size in (("1280,800", (1067, 800)), ("390,844", (390, 292)),
                           ("5000,5000", (4032, 3024))):
        rendered = get(f"{base}/rendered?viewport={viewport}")
        assert rendered.headers["Content-Type"] == "image/jpeg"
        assert rendered.headers["Cache-Control"] == "no-store"
        assert size_of(rendered.content) == size
        assert Image.open(io.BytesIO(rendered.content)).info["icc_profile"] == \
            stored.ICCProfile
    full = get(f"{base}/rendered").content
    assert strip_jpeg(full) == strip_jpeg(frame)  # full size: the captured bitstream
    assert size_of(get(f"{base}/rendered?viewport=200,200", "image/png").content) == (200, 150)
    assert get(f"{base}/rendered?viewport=200,200&accept=image/png").headers[
        "Content-Type"] == "image/png"
    no_icc = get(f"{base}/frames/1/rendered?viewport=200,200&iccprofile=no").content
    assert "icc_profile" not in Image.open(io.BytesIO(no_icc)).info

    thumb = get(f"{base}/thumbnail")
    assert thumb.headers["Cache-Control"] == "private, max-age=600"
    assert "Authorization" in thumb.headers["Vary"]
    assert size_of(thumb.content) == (THUMBNAIL_BOX[0], 192)
    cached = list((services(app).settings.data_dir / "cache" / "thumbnails").rglob("*.jpg"))
    assert [p.read_bytes() for p in cached] == [thumb.content]
    assert get(f"{base}/thumbnail").content == thumb.content
    assert size_of(get(f"{base}/thumbnail?viewport=64,64").content) == (64, 48)
    study_thumb = get(f"{live_server}/dicomweb/studies/{study}/thumbnail").content
    assert size_of(study_thumb) == (256, 192)  # the first original: the chart photo
    for bad in ("viewport=0,10", "viewport=1,2,3,4,5,6", "quality=0", "iccprofile=adobergb"):
        response = requests.get(f"{base}/rendered?{bad}", headers=auth["view"], timeout=10)
        assert response.status_code == 400, bad
    gif = requests.get(f"{base}/rendered", headers={**auth["view"], "Accept": "image/gif"},
                       timeout=10)
    assert gif.status_code == 406
    assert requests.get(f"{base}/frames/2", headers=auth["view"], timeout=10).status_code == 404


def test_every_access_is_audited(app: Flask, client: FlaskClient,
                                 auth: dict[str, dict[str, str]],
                                 chart_study: StoredStudy) -> None:
    study = chart_study.study_uid
    client.get(f"/dicomweb/studies/{study}/metadata", headers=auth["view"])
    client.get(f"/dicomweb/studies/{study}/metadata")
    client.get(f"/dicomweb/studies?PatientID={PATIENT['id']}", headers=auth["view"])
    url = (f"/dicomweb/studies/{study}/series/{chart_study.original_series}/instances/"
           f"{chart_study.originals[0]}/thumbnail")
    client.get(url, headers=auth["view"])
    client.get("/dicomweb/studies/1.2.3/metadata", headers=auth["view"])
    with services(app).db.session() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action.startswith("dicomweb."))
                            .order_by(AuditEvent.seq)).all()
        seen = [(e.actor, e.role, e.action, e.outcome, e.entities[:2]) for e in events]
    assert seen == [
        ("view-user", "view", "dicomweb.retrieve_study_metadata", "success",
         [f"study:{study}", f"instance:{chart_study.originals[0]}"]),
        ("anonymous", None, "dicomweb.retrieve_study_metadata", "denied", [f"study:{study}"]),
        ("view-user", "view", "dicomweb.search_studies", "success",
         ["query:search_studies", f"study:{study}"]),
        ("view-user", "view", "dicomweb.retrieve_instance_thumbnail", "success",
         [f"study:{study}", f"instance:{chart_study.originals[0]}"]),
        ("view-user", "view", "dicomweb.retrieve_study_metadata", "failed",
         ["study:1.2.3"]),
    ]
    assert all(e.recorded_at is not None and e.client == "127.0.0.1" for e in events)
    patient = audit.patient_ref(PATIENT["id"], PATIENT["issuer"])
    assert events[0].entities[5:] == [patient]  # the study, its four instances, its patient
    assert events[2].entities[-1] == patient


def test_no_answer_without_an_audit_record(client: FlaskClient,
                                           auth: dict[str, dict[str, str]],
                                           chart_study: StoredStudy,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(audit, "record", broken)
    response = client.get(f"/dicomweb/studies/{chart_study.study_uid}/metadata",
                          headers=auth["view"])
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "audit_unavailable"
    assert "DEMO" not in response.get_data(as_text=True)


def test_queries_leave_no_phi_in_logs(client: FlaskClient, auth: dict[str, dict[str, str]],
                                      chart_study: StoredStudy,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client.get(f"/dicomweb/studies?PatientID={PATIENT['id']}&PatientName=DEMO*",
               headers=auth["view"])
    client.get("/dicomweb/studies?StudyDate=bad-00123456", headers=auth["view"])
    assert PATIENT["id"] not in caplog.text and "DEMO" not in caplog.text


def test_index_is_cached_and_follows_the_file(app: Flask, client: FlaskClient,
                                              auth: dict[str, dict[str, str]],
                                              chart_study: StoredStudy) -> None:
    """Headers are read once into the index; a row whose file changed is read again."""
    client.get("/dicomweb/studies", headers=auth["view"])
    svc = services(app)
    with svc.db.session() as db:
        row = db.get(Instance, chart_study.originals[0])
        assert row.attributes["dicom"]["00100020"]["Value"] == [PATIENT["id"]]
        data = svc.archive.path(row).read_bytes()
        ds = as_file(data)
        ds.PatientID = "RENAMED"
        buf = io.BytesIO()
        ds.save_as(buf)
        write_durably(svc.archive.path(row), buf.getvalue())
        row.sha256 = hashlib.sha256(buf.getvalue()).hexdigest()
    assert len(_studies(client, auth["view"], "PatientID=RENAMED")) == 1
