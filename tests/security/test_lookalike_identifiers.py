"""Identifiers that look like other identifiers: an MRN, issuer, encounter or accession number
holding an invisible format character (bidirectional controls, zero-width characters, BOM:
Unicode category Cf) is refused wherever it enters, naming the field."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db.models import CaptureSession
from app.pipeline.dicom import values
from tests.conftest import REPO, services

INVISIBLE = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
             "\u2069", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u061c"]
"""The bidi embeddings, overrides and isolates, zero-width space and (non-)joiners, word
joiner, BOM, soft hyphen and Arabic letter mark: all Unicode category Cf."""


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_identifiers_refuse_every_format_character(char: str) -> None:
    assert unicodedata.category(char) == "Cf"
    with pytest.raises(values.InvalidValue) as refused:
        values.identifier(f"0012{char}3456", "patient.id")
    assert refused.value.field == "patient.id"
    assert "0012" not in str(refused.value)
    assert values.identifier(" 00123456 ", "patient.id") == "00123456"
    assert values.text(f"note {char}here", "description") is not None  # free text keeps them


@pytest.mark.parametrize(("body", "field"), [
    ({"patient": {"id": "123\u202e654", "issuer": "LOCAL"}}, "patient.id"),
    ({"patient": {"id": "123654", "issuer": "HOSP\u200b-A"}}, "patient.issuer"),
    ({"patient": {"id": "123654", "issuer": "LOCAL"}, "encounter": "ENC\u20661\u2069"},
     "encounter"),
    ({"patient": {"id": "123654", "issuer": "LOCAL"}, "worklist_item": {
        "study_instance_uid": "2.25.7", "accession_number": "ACC\ufeff1"}},
     "worklist_item.accession_number"),
])
def test_sessions_refuse_lookalike_identifiers_naming_the_field(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], body: dict,
        field: str) -> None:
    answer = client.post("/api/v1/sessions", json=body, headers=auth["capture"])
    assert answer.status_code == 422, answer.get_json()
    message = answer.get_json()["error"]["message"]
    assert message.startswith(f"{field} must not hold invisible formatting characters")
    with services(app).db.session() as db:
        assert db.scalar(select(func.count()).select_from(CaptureSession)) == 0


def test_manual_search_refuses_a_lookalike_mrn(client: FlaskClient,
                                                auth: dict[str, dict[str, str]]) -> None:
    answer = client.post("/api/v1/patients/search", json={"mrn": "00123\u200d456"},
                         headers=auth["capture"])
    assert answer.status_code == 422
    assert answer.get_json()["error"]["message"].startswith("mrn must not hold invisible")


def test_command_line_and_patient_import_refuse_them(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "EBIW_DATA_DIR": str(tmp_path / "var"), "HOME": str(tmp_path)}
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    dicomize = subprocess.run(
        [sys.executable, "-m", "app.cli", "dicomize", str(photo), "--patient-id",
         "0012\u202e3456", "--issuer", "LOCAL", "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert dicomize.returncode == 2
    assert "--patient-id" in dicomize.stderr and "invisible" in dicomize.stderr
    csv = tmp_path / "patients.csv"
    csv.write_text("mrn,issuer,family,given\n0012\u20663456,LOCAL,DOE,JANE\n")
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    imported = subprocess.run([sys.executable, "-m", "app.cli", "patients", "import", str(csv)],
                              cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert imported.returncode != 0
    assert "invisible formatting characters" in imported.stderr + imported.stdout
