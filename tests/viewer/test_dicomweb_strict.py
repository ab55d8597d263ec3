"""DICOMweb to the letter (PS3.18): unknown QIDO keys refused rather than ignored, the
queries OHIF 3 sends still answered, no Content-Type on 204, Rendered Study and Series."""

from __future__ import annotations

import io

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from flask.testing import FlaskClient
from PIL import Image

from tests.viewer.conftest import PATIENT, StoredStudy, parse_multipart, size_of


@pytest.mark.parametrize(("query", "named"), [
    ("FooBar=1", "FooBar"),
    ("PatientID=00123456&patientid=00123456", "patientid"),
    ("includefield=StudyDescription,NoSuchField", "includefield NoSuchField"),
    ("_=1712345678", "_"),
])
def test_qido_refuses_keys_that_name_no_attribute(
        client: FlaskClient, auth: dict[str, dict[str, str]], chart_study: StoredStudy,
        query: str, named: str) -> None:
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{chart_study.study_uid}/series",
                 "/dicomweb/instances"):
        response = client.get(f"{path}?{query}", headers=auth["view"])
        assert response.status_code == 400, (path, response.get_data(as_text=True))
        assert response.get_json()["error"] == {
            "code": "invalid_query",
            "message": f"{named} is neither a QIDO-RS parameter nor a DICOM attribute keyword "
                       "or tag"}
        assert "00123456" not in response.get_data(as_text=True)


def test_the_queries_ohif_sends_are_answered(
        client: FlaskClient, auth: dict[str, dict[str, str]], chart_study: StoredStudy) -> None:
    """OHIF 3's study list (extensions/default DicomWebDataSource qido.js mapParams, with
    wildcards on) and its series list (seriesInStudy)."""
    view, study = auth["view"], chart_study.study_uid
    study_list = ("PatientName=*DEMO*&00100020=*00123456*&ModalitiesInStudy=XC&limit=101"
                  "&offset=0&fuzzymatching=false"
                  "&includefield=00081030,00080060,00080090,00100030"
                  f"&StudyDate=19700102-29991231&StudyInstanceUID={study}\\2.25.1")
    found = client.get(f"/dicomweb/studies?{study_list}", headers=view)
    assert found.status_code == 200, found.get_data(as_text=True)
    (result,) = found.get_json()
    assert result["0020000D"]["Value"] == [study]
    assert result["00100030"]["Value"] == ["19500314"]
    series = client.get(f"/dicomweb/studies/{study}/series?includefield=0008103E,00080021",
                        headers=view)
    assert series.status_code == 200
    assert [s["0020000E"]["Value"][0] for s in series.get_json()] == [
        chart_study.original_series, chart_study.derived_series]


def test_no_content_type_on_204(client: FlaskClient, auth: dict[str, dict[str, str]],
                                chart_study: StoredStudy) -> None:
    nothing = client.get("/dicomweb/studies?PatientID=NOBODY", headers=auth["view"])
    assert nothing.status_code == 204
    assert "Content-Type" not in nothing.headers
    assert nothing.get_data() == b""
    client.post("/login", data={"username": "x", "password": "y"})
    logout = client.post("/logout", headers={"Accept": "application/json",
                                             "X-CSRF-Token": "none"})
    assert logout.status_code == 204, logout.get_data(as_text=True)
    assert "Content-Type" not in logout.headers


def test_rendered_series_and_study(live_server: str, auth: dict[str, dict[str, str]],
                                   chart_study: StoredStudy) -> None:
    study, series = chart_study.study_uid, chart_study.original_series
    base = f"{live_server}/dicomweb/studies/{study}"
    first = f"{base}/series/{series}/instances/{chart_study.originals[0]}/rendered"

    def get(url: str, accept: str) -> requests.Response:
        return requests.get(url, headers={**auth["view"], "Accept": accept}, timeout=60)

    one = get(f"{base}/series/{series}/rendered?viewport=400,400", "image/jpeg")
    assert one.status_code == 200, one.text
    assert one.headers["Content-Type"] == "image/jpeg"
    assert one.content == get(f"{first}?viewport=400,400", "image/jpeg").content
    png = get(f"{base}/series/{series}/rendered?viewport=200,200", "image/png")
    assert Image.open(io.BytesIO(png.content)).format == "PNG"

    every = get(f"{base}/series/{series}/rendered?viewport=400,400",
                'multipart/related; type="image/jpeg"')
    assert every.status_code == 200
    assert every.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(every.headers["Content-Type"], every.content)
    assert [headers["Content-Type"] for headers, _ in parts] == ["image/jpeg"] * 2
    assert [size_of(body) for _, body in parts] == [(400, 300), (400, 300)]
    assert parts[0][1] == one.content

    whole = get(f"{base}/rendered?viewport=100,100", "multipart/related; type=image/png")
    parts = parse_multipart(whole.headers["Content-Type"], whole.content)
    assert len(parts) == 4  # two originals, two colour-normalized
    assert all(Image.open(io.BytesIO(body)).format == "PNG" for _, body in parts)
    assert get(f"{base}/rendered", "multipart/related; type=image/gif").status_code == 406
    assert get(f"{base}/series/2.25.9/rendered", "image/jpeg").status_code == 404

    dw = DICOMwebClient(url=f"{live_server}/dicomweb", headers=auth["view"])
    rendered = dw.retrieve_series_rendered(study, series, media_types=("image/jpeg",),
                                           params={"viewport": "400,400"})
    assert rendered == one.content
    assert PATIENT["id"] not in whole.headers.get("Content-Type", "")
