"""The local patient index: lookups, FHIR Bundle and CSV import (idempotent), the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from flask import Flask

from app.gateways.patients import Directories, ImportFormatError
from app.gateways.patients.local import LocalIndex, read_import_file
from app.workflow.identification import import_patient_file
from tests.conftest import REPO, SHARED, services
from tests.patients.conftest import write

SEED_BUNDLE = SHARED / "tools" / "fhir" / "examples" / "seed-r4.json"

CSV = """mrn,issuer,family,given,birth_date,sex,encounter,encounter_status,encounter_start,\
department
00123456,HOSP-A,DEMO,ALICE,1950-03-14,F,ENC1,in-progress,2024-05-01T08:00:00+02:00,Wound care
00123456,HOSP-A,DEMO,ALICE,1950-03-14,F,ENC0,finished,2023-01-01T08:00:00Z,Wound care
00123456,HOSP-A,DEMO,ALICE,1950-03-14,F,ENC2,planned,,Dermatology
00123456,HOSP-B,OTHER,ANNA,1990-01-01,female,,,,
00999999,,SOLO,SAM,,,,,,
"""


def counts(app: Flask, path: Path, **kwargs: str) -> dict[str, int]:
    svc = services(app)
    return dataclasses.asdict(import_patient_file(svc.db, path, settings=svc.settings, **kwargs))


def test_csv_import_and_lookups(app: Flask, tmp_path: Path) -> None:
    path = write(tmp_path / "patients.csv", CSV)
    assert counts(app, path) == {"patients_added": 3, "patients_updated": 0,
                                 "encounters_added": 3, "encounters_updated": 0}
    index = LocalIndex(services(app).db)
    [alice] = index.find("00123456", "HOSP-A")
    assert (alice.family, alice.given, alice.birth_date, alice.sex) == ("DEMO", "ALICE",
                                                                        date(1950, 3, 14), "F")
    assert alice.sources == ("local",) and alice.dicom_name == "DEMO^ALICE"
    # Only open encounters, in-progress before planned; the finished one is not offered.
    assert [(e.identifier, e.status) for e in alice.encounters] == [("ENC1", "in-progress"),
                                                                    ("ENC2", "planned")]
    assert alice.encounters[0].department == "Wound care"
    assert alice.encounters[0].started is not None and alice.encounters[0].started.hour == 6
    # The same MRN under two issuers: without an issuer both are found, never one of them.
    assert [(p.issuer, p.given) for p in index.find("00123456", None)] == [
        ("HOSP-A", "ALICE"), ("HOSP-B", "ANNA")]
    [solo] = index.find("00999999", None)
    assert (solo.issuer, solo.birth_date, solo.sex) == (services(app).settings.default_issuer,
                                                        None, None)
    assert index.find("00123456", "HOSP-C") == [] and index.find("0012345", None) == []


def test_reimport_is_idempotent_and_updates(app: Flask, tmp_path: Path) -> None:
    path = write(tmp_path / "patients.csv", CSV)
    counts(app, path)
    assert counts(app, path) == {"patients_added": 0, "patients_updated": 0,
                                 "encounters_added": 0, "encounters_updated": 0}
    changed = CSV.replace("ENC2,planned", "ENC2,in-progress").replace("OTHER,ANNA",
                                                                      "OTHER,ANNE")
    assert counts(app, write(tmp_path / "changed.csv", changed)) == {
        "patients_added": 0, "patients_updated": 1, "encounters_added": 0,
        "encounters_updated": 1}
    # A file that leaves a patient or encounter out deletes nothing.
    assert counts(app, write(tmp_path / "one.csv", "mrn,issuer\n00123456,HOSP-A\n")) == {
        "patients_added": 0, "patients_updated": 1, "encounters_added": 0,
        "encounters_updated": 0}
    [alice] = LocalIndex(services(app).db).find("00123456", "HOSP-A")
    assert len(alice.encounters) == 2


def test_fhir_bundle_import(app: Flask, tmp_path: Path) -> None:
    """The FHIR peer's own seed Bundle: Patients p1, p2 and Encounter e1 (ENC-42) of p1.

    Their MRN system urn:oid:1.2.3.4.5.6 names the issuer 1.2.3.4.5.6, as for the EMR notifier.
    """
    assert counts(app, SEED_BUNDLE, issuer="HOSP-A") == {
        "patients_added": 2, "patients_updated": 0, "encounters_added": 1,
        "encounters_updated": 0}
    assert counts(app, SEED_BUNDLE)["patients_added"] == 0
    [alice] = LocalIndex(services(app).db).find("MRN0001", "1.2.3.4.5.6")
    assert (alice.family, alice.given, alice.birth_date, alice.sex) == (
        "TEST", "ALICE", date(1970, 1, 1), "F")
    assert [(e.identifier, e.status) for e in alice.encounters] == [("ENC-42", "in-progress")]
    [bob] = LocalIndex(services(app).db).find("MRN0002", None)
    assert bob.sex == "M" and bob.encounters == ()

    # Encounters may reference their patient by the entry's fullUrl (transaction style); the
    # MRN system maps to an issuer through EBIW_EMR_ISSUER_SYSTEMS.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {
            "resourceType": "Patient", "identifier": [
                {"system": "urn:ssn", "value": "123-45-6789"},
                {"system": "urn:oid:9.9", "value": "K-77"}],
            "name": [{"use": "nickname", "given": ["KIT"]},
                     {"use": "official", "family": "KAY", "given": ["KATE", "M"]}],
            "gender": "other", "birthDate": "1981"}},
        {"resource": {"resourceType": "Patient", "identifier": [
            {"system": "urn:x", "value": "Z-1", "type": {"coding": [{"code": "MR"}]}},
            {"system": "urn:ssn", "value": "987-65-4321"}]}},
        {"resource": {"resourceType": "Encounter", "status": "arrived",
                      "subject": {"reference": "urn:uuid:1"}, "id": "v9",
                      "serviceProvider": {"display": "Burns unit"}}}]}
    svc = services(app)
    settings = dataclasses.replace(svc.settings, emr_issuer_systems=json.dumps(
        {"HOSP-K": "urn:oid:9.9"}))
    path = write(tmp_path / "bundle.json", json.dumps(bundle))
    import_patient_file(svc.db, path, settings=settings)
    [kate] = LocalIndex(svc.db).find("K-77", None)
    assert (kate.issuer, kate.family, kate.given, kate.sex, kate.birth_date) == (
        "HOSP-K", "KAY", "KATE M", "O", None)
    assert [(e.identifier, e.status, e.department) for e in kate.encounters] == [
        ("v9", "arrived", "Burns unit")]
    [zed] = LocalIndex(svc.db).find("Z-1", None)  # typed MR, unmapped system: default issuer
    assert zed.issuer == svc.settings.default_issuer


@pytest.mark.parametrize(("text", "message"), [
    ("family\nDOE\n", "mrn column"),
    ("mrn,colour\n1,red\n", "unknown CSV columns: colour"),
    ("mrn,sex\n00123456,X\n", "row 2: sex"),
    ("mrn,birth_date\n00123456,14/03/1950\n", "row 2: birth_date"),
    ("mrn,family\n00123456,DOE\n00123456,ROE\n", "row 3: the patient's details differ"),
    ("mrn\nA\\B\n", "patient 1: the MRN"),
    ("mrn,encounter,encounter_status\n00123456,E1,done\n", "encounter status"),
    ('{"resourceType": "Patient"}', "not a FHIR Bundle"),
    ('{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]}',
     "entry 1: the Patient has no usable MRN"),
    ('{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Encounter",'
     ' "status": "planned", "subject": {"reference": "Patient/x"}}}]}',
     "entry 1: the Encounter's subject"),
    ('{"resourceType": "Bundle",', "not valid JSON"),
])
def test_bad_import_files_are_refused_without_phi(tmp_path: Path, text: str,
                                                  message: str) -> None:
    with pytest.raises(ImportFormatError) as caught:
        read_import_file(write(tmp_path / "bad", text), default_issuer="LOCAL",
                         issuer_systems={})
    assert message in str(caught.value)
    assert "00123456" not in str(caught.value) and "DOE" not in str(caught.value)


def test_directories_merge_in_order(app: Flask, tmp_path: Path) -> None:
    """Two directories knowing the same patient give one record: first one's demographics,
    everyone's encounters."""
    counts(app, write(tmp_path / "a.csv", CSV))
    index = LocalIndex(services(app).db)

    class Other:
        name = "mwl"

        def find(self, mrn: str, issuer: str | None) -> list:
            [alice] = index.find(mrn, "HOSP-A")
            extra = dataclasses.replace(alice.encounters[0], identifier="ENC9", status=None)
            return [dataclasses.replace(alice, given="X", sources=("mwl",),
                                        encounters=(extra, *alice.encounters))]

    lookup = Directories([index, Other()]).find("00123456", "HOSP-A")
    [alice] = lookup.patients
    assert alice.given == "ALICE" and alice.sources == ("local", "mwl")
    assert [e.identifier for e in alice.encounters] == ["ENC1", "ENC2", "ENC9"]
    assert lookup.unavailable == {}


def test_cli_patients_import_prints_json_lines(tmp_path: Path) -> None:
    good = write(tmp_path / "patients.csv", CSV)
    bad = write(tmp_path / "bad.csv", "family\nDOE\n")
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var")}
    run = [sys.executable, "-m", "app.cli", "patients", "import", str(good), str(bad)]
    proc = subprocess.run(run, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0] == {"file": str(good), "patients_added": 3, "patients_updated": 0,
                        "encounters_added": 3, "encounters_updated": 0}
    assert lines[1]["file"] == str(bad) and "mrn column" in lines[1]["error"]
    again = subprocess.run(run[:-1], capture_output=True, text=True, env=env, cwd=REPO,
                           check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["patients_added"] == 0
