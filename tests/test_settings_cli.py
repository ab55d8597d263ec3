"""Settings from the environment and the ebiw command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from app.settings import Settings, SettingsError
from tests.conftest import CHARTS, REPO


def test_embedded_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({"EBIW_DATA_DIR": str(tmp_path)})
    assert s.archive_root == tmp_path / "archive"
    assert s.database.startswith("sqlite:///") and s.database.endswith("ebiw.sqlite3")
    assert s.uid_prefix == "2.25" and len(s.secret_key) >= 32
    assert Settings.from_env({"EBIW_DATA_DIR": str(tmp_path)}).secret_key == s.secret_key
    assert (tmp_path / ".secret_key").stat().st_mode & 0o077 == 0
    assert Settings.from_env({"EBIW_MAX_PIXELS": "1000"}, {"data_dir": tmp_path}).max_pixels == 1000


@pytest.mark.parametrize(("environ", "message"), [
    ({"EBIW_ENV": "production", "EBIW_UID_ROOT": "1.2.3"}, "EBIW_SECRET_KEY"),
    ({"EBIW_ENV": "production", "EBIW_SECRET_KEY": "k" * 40}, "EBIW_UID_ROOT"),
    ({"EBIW_MAX_PIXELS": "many"}, "EBIW_MAX_PIXELS"),
    ({"EBIW_ENV": "staging"}, "EBIW_ENV"),
])
def test_bad_or_missing_settings_stop_startup(environ: dict[str, str], message: str,
                                              tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({**environ, "EBIW_DATA_DIR": str(tmp_path)})


def test_the_public_url_defaults_to_the_bound_address(tmp_path: Path) -> None:
    base = {"EBIW_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).public_url == "http://127.0.0.1:8000"
    assert Settings.from_env({**base, "EBIW_BIND": "127.0.0.1:8011"}).public_url == \
        "http://127.0.0.1:8011"
    assert Settings.from_env({**base, "EBIW_BIND": "[::1]:8011"}).public_url == \
        "http://[::1]:8011"
    assert Settings.from_env({**base, "EBIW_BIND": "0.0.0.0:8011"}).public_url == \
        f"http://{socket.getfqdn()}:8011"
    explicit = {**base, "EBIW_BIND": "127.0.0.1:8011", "EBIW_PUBLIC_URL": "https://photos.example"}
    assert Settings.from_env(explicit).public_url == "https://photos.example"
    with pytest.raises(SettingsError, match="EBIW_PUBLIC_URL"):
        Settings.from_env({**base, "EBIW_PUBLIC_URL": "photos.example"})
    with pytest.raises(SettingsError, match="EBIW_BIND"):
        Settings.from_env({**base, "EBIW_BIND": "8011"})


def test_production_with_secrets_is_accepted(tmp_path: Path) -> None:
    s = Settings.from_env({"EBIW_ENV": "production", "EBIW_SECRET_KEY": "k" * 40,
                           "EBIW_UID_ROOT": "1.2.826.0.1.3680043.10.999",
                           "EBIW_DATA_DIR": str(tmp_path)})
    assert s.production and s.uid_prefix == "1.2.826.0.1.3680043.10.999"


def ebiw(*args: str, data_dir: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EBIW_DATA_DIR": str(data_dir), **environ}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, check=False)


def test_cli_dicomize_prints_one_json_line_per_file(tmp_path: Path) -> None:
    photo = CHARTS / "qiu_passport.jpg"
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("<html></html>")
    out = tmp_path / "out"
    proc = ebiw("dicomize", str(photo), str(bad), "--patient-id", "MRN0001", "--issuer", "HOSP",
                "--name", "TEST^ALICE", "--birth-date", "19700101", "--sex", "F",
                "--body-site", "14975008", "--laterality", "R", "--out", str(out),
                data_dir=tmp_path / "var")
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["input"] == str(photo) and "error" in lines[1]
    ds = pydicom.dcmread(lines[0]["output"])
    assert ds.SOPInstanceUID == lines[0]["sop_instance_uid"]
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.ImageLaterality) == ("MRN0001", "HOSP", "R")
    assert lines[1] == {"input": str(bad), "error": "not a supported image (expected JPEG, "
                                                    "PNG, HEIC, TIFF or WebP)"}


@pytest.mark.parametrize(("args", "option"), [
    (("dicomize", "x.jpg", "--patient-id", "0012\t3456", "--issuer", "HOSP", "--out", "o"),
     "--patient-id"),
    (("dicomize", "x.jpg", "--patient-id", "1", "--issuer", "HOSP\\A", "--out", "o"),
     "--issuer"),
    (("dicomize", "x.jpg", "--patient-id", "1", "--issuer", "HOSP", "--name", "A" * 65,
      "--out", "o"), "--name"),
    (("import", "x.jpg", "--patient-id", "0012\t3456", "--issuer", "HOSP"), "--patient-id"),
    (("import", "x.jpg", "--department", "Wound\x07care"), "--department"),
    (("patients", "import", "x.csv", "--issuer", "I" * 65), "--issuer"),
    (("dicomize", "x.jpg", "--patient-id", " ", "--issuer", "HOSP", "--out", "o"),
     "--patient-id"),
])
def test_cli_refuses_values_dicom_cannot_hold_naming_the_option(
        tmp_path: Path, args: tuple[str, ...], option: str) -> None:
    """Identifiers given on the command line obey the rules of the attributes they become
    (they used to reach the DICOM object, or fail later about a field nobody had typed)."""
    proc = ebiw(*args, data_dir=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (f"Invalid value for '{option}': must be" in proc.stderr
            or f"Invalid value for '{option}': is required" in proc.stderr), proc.stderr
    assert not (tmp_path / "o").exists()


def test_dicomize_refuses_a_paired_site_without_its_side_as_the_api_does(
        tmp_path: Path) -> None:
    """Forearm (14975008) is paired: R, L or B, as an upload requires (it used to write a
    forearm of no side)."""
    for side in ((), ("--laterality", "U")):
        proc = ebiw("dicomize", "x.jpg", "--patient-id", "1", "--issuer", "HOSP", "--out", "o",
                    "--body-site", "14975008", *side, data_dir=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert ("Invalid value for '--laterality': laterality (R, L or B) is required for this "
                "body site") in proc.stderr
        assert not (tmp_path / "o").exists()


def test_cli_token_demo_and_db(tmp_path: Path) -> None:
    assert ebiw("db", "upgrade", data_dir=tmp_path).returncode == 0
    demo = ebiw("demo", data_dir=tmp_path)
    assert "4 added" in demo.stdout, demo.stderr
    assert "0 added" in ebiw("demo", data_dir=tmp_path).stdout
    token = ebiw("token", "create", "--user", "ward7", "--role", "capture", data_dir=tmp_path)
    assert token.stdout.startswith("ebiw_") and len(token.stdout.strip()) > 40
    refused = ebiw("token", "create", "--user", "x", "--role", "root", data_dir=tmp_path)
    assert refused.returncode != 0


def test_cli_normalize_prints_the_report(tmp_path: Path) -> None:
    chart, none = CHARTS / "luimoli_d65.jpg", CHARTS / "karnehen_cam2_nochart.jpg"
    proc = ebiw("normalize", str(chart), str(none), "--out", str(tmp_path / "out"),
                data_dir=tmp_path / "var")
    assert proc.returncode == 0, proc.stderr
    found, missing = (json.loads(line) for line in proc.stdout.splitlines())
    assert found["chart"]["type"] == "classic24" and len(found["chart"]["corners"]) == 4
    assert set(found["delta_e_after"]) == {"mean", "max", "loo_mean"}
    assert found["delta_e_after"]["mean"] < found["delta_e_before"]["mean"]
    assert Path(found["output"]).read_bytes()[:2] == b"\xff\xd8"
    assert missing["chart"] is None and missing["output"] is None


def test_cli_normalize_keeps_the_reliability_limit_intake_keeps(tmp_path: Path) -> None:
    """A correction whose leave-one-out error is over EBIW_COLOR_MAX_LOO_DELTA_E is reported
    and not written, as intake reports it and stores no normalized instance."""
    proc = ebiw("normalize", str(CHARTS / "luimoli_d65.jpg"), "--out", str(tmp_path / "out"),
                data_dir=tmp_path / "var", EBIW_COLOR_MAX_LOO_DELTA_E="0.01")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["chart"]["type"] == "classic24"
    assert report["output"] is None and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "setting"), [
    ("dicom-scp", "EBIW_DICOM_SCP_ALLOWED_AETS"),
    ("adt-listener", "EBIW_ADT_ALLOWED_SENDERS"),
])
def test_a_listener_without_its_allow_list_does_not_start(command: str, setting: str,
                                                          tmp_path: Path) -> None:
    """A listener open to every caller is refused at start-up: usage error (exit 2) naming the
    setting, and no database is created."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBIW_")}
    env["EBIW_DATA_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "app.cli", command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert setting in done.stderr
    assert not (tmp_path / "ebiw.sqlite3").exists()
