"""The real OHIF Viewer 3.13.2 (unmodified, ``../shared/tools/ohif``) lists and displays a study
stored from a real photo, over our DICOMweb with a view token, and nothing it asks for is refused.

``ohif_serve.py`` serves OHIF with a same-origin proxy that adds the bearer token and logs every
proxied request; ``ohif_check.py`` drives it in headless Chromium and reports whether the study
was listed and its image drawn. The first run fetches the viewer once with ``npm pack`` into
``~/.cache/ohif-peer`` (about 50 MB), as the tool does; later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import Instance
from app.workflow.tokens import create_token
from tests.conftest import ARTIFACTS, CHROMIUM, SHARED, served, services
from tests.test_measure_instance import measure
from tests.test_serve import free_port
from tests.viewer.conftest import CHART, photo, upload_study

OHIF = SHARED / "tools" / "ohif"
VIEWER_CACHE = Path.home() / ".cache" / "ohif-peer"


def viewer_available() -> str | None:
    """Why the peer cannot run here, or None."""
    if not CHROMIUM.exists():
        return "OHIF check needs Debian's chromium at /usr/bin/chromium"
    cached = (VIEWER_CACHE / "package" / "dist" / "index.html").exists() \
        or (VIEWER_CACHE / "ohif-app-3.13.2.tgz").exists()
    if not cached and shutil.which("npm") is None:
        return "OHIF check needs npm once to fetch @ohif/app@3.13.2 (not cached, npm absent)"
    return None


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (up to 3 min: the first run extracts 200 MB) until ``url`` answers."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {log.read_text()}")


@dataclass(frozen=True)
class OhifRun:
    """What one ``ohif_check.py`` run reported, and the proxy's log of the requests it made."""

    report: dict[str, Any]
    returncode: int
    proxied: list[dict[str, Any]]
    log_text: str


def run_ohif_check(app: Flask, study_uid: str, tmp_path: Path, token: str,
                   shots: Path) -> OhifRun:
    """Serve ``app``, serve OHIF in front of it with ``token``, run ``ohif_check.py`` on
    ``study_uid`` (screenshots in ``shots``) and return its report (skips where the peer
    cannot run)."""
    reason = viewer_available()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("playwright")
    proxy_port = free_port()
    proxy = f"http://127.0.0.1:{proxy_port}"
    requests_log, serve_log = tmp_path / "requests.jsonl", tmp_path / "ohif_serve.log"
    shots.mkdir(parents=True, exist_ok=True)
    with served(app) as url:
        # Retrieve and BulkData URIs must point at the proxy, which holds the token
        svc = services(app)
        app.extensions["ebiw"] = replace(svc, settings=replace(svc.settings, public_url=proxy))
        with serve_log.open("w") as out:
            viewer = subprocess.Popen(
                [sys.executable, str(OHIF / "ohif_serve.py"), "--dicomweb", f"{url}/dicomweb",
                 "--token", token, "--port", str(proxy_port), "--cache", str(VIEWER_CACHE),
                 "--log", str(requests_log)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_up(proxy, viewer, serve_log)
            check = subprocess.run(
                [sys.executable, str(OHIF / "ohif_check.py"), "--url", proxy,
                 "--study", study_uid, "--log", str(requests_log), "--shots", str(shots),
                 "--chromium", str(CHROMIUM), "--timeout", "120"],
                capture_output=True, text=True, timeout=400, check=False)
        finally:
            viewer.terminate()
            viewer.wait(timeout=30)
    lines = check.stdout.strip().splitlines()
    assert lines, check.stderr[-3000:]
    log_text = requests_log.read_text()
    return OhifRun(json.loads(lines[-1]), check.returncode,
                   [json.loads(line) for line in log_text.splitlines()], log_text)


def test_ohif_lists_and_displays_a_stored_photo_and_nothing_it_asks_is_refused(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    study = upload_study(client, auth["capture"], [photo(CHART)])
    token = create_token(services(app).db, "ohif-viewer", "view")
    run = run_ohif_check(app, study.study_uid, tmp_path, token, ARTIFACTS / "ohif")
    report, proxied = run.report, run.proxied
    assert report["study_listed"], report
    assert report["rendered"], report
    assert report["failed_requests"] == [], report
    assert run.returncode == 0, report

    refused = [(r["method"], r["path"], r["status"], r.get("body")) for r in proxied
               if r["status"] >= 400]
    assert refused == []
    paths = {urlsplit(r["path"]).path.replace(study.study_uid, "STUDY") for r in proxied}
    searches = [set(dict(parse_qsl(urlsplit(r["path"]).query))) for r in proxied
                if urlsplit(r["path"]).path == "/dicomweb/studies"]
    # OHIF's study list sends its paging, fuzzy-matching and include-field keys (all answered
    # 200 above), then searches the study's series
    assert any(keys >= {"limit", "offset", "fuzzymatching", "includefield"}
               for keys in searches), searches
    assert "/dicomweb/studies/STUDY/series" in paths, sorted(paths)
    frames = [r for r in proxied if "/frames/" in r["path"] and r["status"] == 200]
    assert frames, "OHIF fetched no frame of the stored photo"
    assert token not in run.log_text


OHIF_CANNOT_HYDRATE = (
    "OHIF 3.13.2 lists in its Measurements panel only SR groups it can rehydrate into "
    "Cornerstone tools: a Tracking Identifier in Cornerstone's own convention "
    "('Cornerstone3DTools@^0.1.0:Length', ...), or a 4/5-point POLYLINE (taken as a rectangle) "
    "or a POINT; it also merges the groups that share a Tracking Unique Identifier into one. Our "
    "TID 1500 groups carry the wound's label as Tracking Identifier and one Tracking UID per "
    "wound, so OHIF shows the SR read-only in its SR viewport (not rehydratable) and the panel "
    "stays empty; ohif_check.py's double-click on the SR is also blocked by OHIF's first-run "
    "tour and banner. README, 'OHIF and our measurement SR'.")


def test_ohif_loads_our_measurement_sr_and_nothing_it_asks_is_refused(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """A measurement SR stored by ``ebiw measure --instance``: OHIF lists its series, fetches
    its metadata and the photo it references, and nothing it asks for is refused. Whether its
    Measurements panel lists the SR's measurements is reported by ``ohif_check.py``; OHIF
    3.13.2 does not (:data:`OHIF_CANNOT_HYDRATE`), which this test records as an expected
    failure until it does."""
    study = upload_study(client, auth["capture"], [photo(CHART)])
    result = measure(app, "--instance", study.originals[0], "--line", "400,500,1100,600",
                     "--polygon", "500,400,900,420,880,800,520,780", "--wound", "wound 1")
    assert result.exit_code == 0, result.output
    with services(app).db.session() as db:
        sr = db.get(Instance, json.loads(result.output)["sr_sop_instance_uid"])
        assert sr is not None
        sr_series = sr.series_uid
    token = create_token(services(app).db, "ohif-viewer", "view")
    run = run_ohif_check(app, study.study_uid, tmp_path, token, ARTIFACTS / "ohif-sr")
    report = run.report
    assert report["study_listed"] and report["rendered"], report
    assert report["failed_requests"] == [], report
    assert report["sr_measurements_shown"] is not None, report  # the SR series was found
    fetched = {(urlsplit(r["path"]).path, r["status"]) for r in run.proxied}
    assert (f"/dicomweb/studies/{study.study_uid}/series/{sr_series}/metadata", 200) in fetched
    if not report["sr_measurements_shown"]:
        pytest.xfail(OHIF_CANNOT_HYDRATE)
