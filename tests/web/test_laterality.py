"""Image Laterality of the stored files is the side the capture form asked for: R, L or B for a
paired body site (every sided structure asks for its side), U only for an unpaired one."""

from __future__ import annotations

import uuid

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import services
from tests.web.test_api import PHOTO, open_session

FOREARM, ABDOMEN, PAROTID, TEMPORAL_SKIN, CORNEA = (
    "14975008", "818981001", "45289007", "16621002", "28726007")


def stored_laterality(app: Flask, client: FlaskClient, headers: dict[str, str],
                      site: str, side: str | None) -> list[str]:
    """Open a session for ``site`` and ``side``, upload a chart photo: the Image Laterality of
    the stored original and of its colour-normalized copy."""
    session = open_session(client, headers, id=str(uuid.uuid4()), body_site=site,
                           laterality=side)
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    body = put.get_json()
    root = services(app).settings.archive_root
    return [pydicom.dcmread(next(root.rglob(f"{uid}.dcm"))).ImageLaterality
            for uid in (body["sop_instance_uid"], body["normalized_sop_instance_uid"])]


@pytest.mark.parametrize(("site", "side", "expected"), [
    (FOREARM, "R", "R"), (FOREARM, "L", "L"), (FOREARM, "B", "B"),
    (PAROTID, "L", "L"), (ABDOMEN, None, "U")])
def test_image_laterality_is_the_side_asked_for(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], site: str,
        side: str | None, expected: str) -> None:
    assert stored_laterality(app, client, auth["capture"], site, side) == [expected, expected]


def test_sided_structures_ask_for_their_side_instead_of_storing_u(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    sites = {s["code"]: s for s in client.get("/api/v1/body-sites",
                                              headers=auth["capture"]).get_json()}
    # The capture form shows the side for these (sites.js: paired), so U is never stored
    # for a parotid gland, the skin of a temple or a cornea.
    assert [sites[c]["paired"] for c in (PAROTID, TEMPORAL_SKIN, CORNEA, ABDOMEN)] == [
        True, True, True, False]
    refused = client.post("/api/v1/sessions", headers=auth["capture"], json={
        "patient": {"id": "00123456", "issuer": "HOSP-A"}, "body_site": PAROTID})
    assert refused.status_code == 422
    assert "laterality (R, L or B) is required" in refused.get_json()["error"]["message"]
