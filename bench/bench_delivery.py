"""Delivery to a PACS (Orthanc on loopback): accept → stored latency, and backlog drain rate,
each beside a direct STOW-RS of the same DICOM files measured in the same run.

1. Latency: ``ebiw serve`` (gunicorn, 2 workers, a delivery thread each, SQLite, the local EMR
   notifier) with one STOW-RS destination; real photos PUT one at a time over HTTP; for each,
   the time from the 201 until the outbox row is sent (Orthanc answered 200), and until the
   EMR notice covering it is sent. Peer: a requests POST of the same Part 10 file to a second
   Orthanc that does not have it yet.
2. Drain: 200 photos accepted while no worker runs, then delivered by 2 worker threads (as
   ``ebiw worker --threads 2``, process start not counted); batches of up to 20, one study
   each; also one EMR notice per study. Peer: the same DICOM files (originals, and the
   colour-normalized instances where the colour step made them) POSTed as multipart/related
   by requests, 2 threads, the same batches, to the second Orthanc.
Usage: .venv/bin/python bench/bench_delivery.py [LATENCY_PHOTOS=30] [BACKLOG=200]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import REPO, TESTDATA, table
from sqlalchemy import select

from app.db.models import Delivery, Instance
from app.db.session import Database
from app.gateways.archive.local import LocalArchive
from app.gateways.registry import build_registry
from app.settings import Settings
from app.workflow.delivery import drain
from app.workflow.intake import Intake, SessionRequest
from app.workflow.tokens import create_token

PEERS = REPO.parent / "shared" / "tools" / "peers"
PHOTOS = sorted((TESTDATA / "colourchart").glob("*.jpg"))
BATCH = 20
PHOTOS_PER_SESSION = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    def __init__(self, root: Path) -> None:
        self.root, self.http, self.dicom = root, free_port(), free_port()
        subprocess.run(["bash", str(PEERS / "orthanc_start.sh"), str(root), str(self.http),
                        str(self.dicom)], check=True, capture_output=True)
        self.dicomweb = f"http://127.0.0.1:{self.http}/dicom-web"

    def count(self) -> int:
        return requests.get(f"http://127.0.0.1:{self.http}/statistics",
                            timeout=10).json()["CountInstances"]

    def stop(self) -> None:
        subprocess.run(["bash", str(PEERS / "orthanc_stop.sh"), str(self.root)],
                       capture_output=True, check=False)


def stow(session: requests.Session, url: str, study_uid: str, files: Sequence[bytes]) -> None:
    """The peer: one plain multipart/related STOW-RS POST."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f
                    + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()
    response = session.post(f"{url}/studies/{study_uid}", data=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    response.raise_for_status()


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000


def destinations_file(folder: Path, orthanc: Orthanc) -> Path:
    path = folder / "destinations.json"
    path.write_text(json.dumps({"destinations": [
        {"name": "orthanc", "type": "stow-rs", "url": orthanc.dicomweb, "batch_size": BATCH}]}))
    return path


def latency(tmp: Path, orthanc: Orthanc, peer: Orthanc, count: int) -> dict[str, list[float]]:
    """PUT ``count`` photos to ``ebiw serve`` delivering to ``orthanc``; seconds per photo for
    each step, and for a direct POST of the same original to ``peer`` (which lacks it)."""
    data_dir = tmp / "serve"
    env = {**os.environ, "EBIW_DATA_DIR": str(data_dir), "EBIW_ENV": "test",
           "EBIW_DESTINATIONS_FILE": str(destinations_file(tmp, orthanc))}
    settings = Settings.from_env(env)
    db = Database(settings.database)
    db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(db, 'bench', 'capture')}"}
    port = free_port()
    log = (tmp / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                               "--workers", "2"], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    http = requests.Session()
    results: dict[str, list[float]] = {"put": [], "pacs": [], "emr": [], "direct": []}
    try:
        for _ in range(300):
            assert server.poll() is None, f"ebiw serve exited; see {tmp / 'serve.log'}"
            try:
                if requests.get(f"{base}/healthz", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        time.sleep(2.0)  # let every gunicorn worker boot and start its delivery thread
        session_id = ""
        for number in range(count):
            if number % PHOTOS_PER_SESSION == 0:
                session_id = http.post(f"{base}/api/v1/sessions", headers=headers, json={
                    "patient": {"id": "BENCH", "issuer": "BENCH"}}).json()["id"]
            photo = PHOTOS[number % len(PHOTOS)].read_bytes()
            t0 = time.perf_counter()
            put = http.put(f"{base}/api/v1/sessions/{session_id}/photos/{uuid.uuid4()}",
                           data=photo, headers=headers)
            accepted = time.perf_counter()
            put.raise_for_status()
            sop_uid = put.json()["sop_instance_uid"]
            with db.session() as s:
                instance = s.get(Instance, sop_uid)
                emr = s.scalar(select(Delivery.version).where(
                    Delivery.study_uid == instance.study_uid, Delivery.kind == "emr"))
            pacs_at = emr_at = None
            while pacs_at is None or (emr is not None and emr_at is None):
                with db.session() as s:
                    rows = s.execute(select(Delivery.kind, Delivery.status, Delivery.version)
                                     .where(Delivery.study_uid == instance.study_uid,
                                            Delivery.sop_uid.in_([sop_uid, ""]))).all()
                now = time.perf_counter()
                if pacs_at is None and any(k == "pacs" and st == "sent" for k, st, _ in rows):
                    pacs_at = now
                if emr_at is None and any(k == "emr" and st == "sent" and v >= (emr or 0)
                                          for k, st, v in rows):
                    emr_at = now
                time.sleep(0.005)
            results["put"].append(accepted - t0)
            results["pacs"].append(pacs_at - accepted)
            if emr is not None:
                results["emr"].append(emr_at - accepted)
            part10 = LocalArchive(settings.archive_root).read(instance)
            t0 = time.perf_counter()
            stow(http, peer.dicomweb, instance.study_uid, [part10])
            results["direct"].append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        db.engine.dispose()
    return results


def backlog(tmp: Path, orthanc: Orthanc, peer: Orthanc, count: int) -> dict[str, float]:
    """Deliver ``count`` queued photos (their originals and any colour-normalized DERIVED
    instances; also one EMR notice per study to the local FHIR store), then POST the same
    files directly; seconds, instances, MB, studies."""
    settings = Settings.from_env({"EBIW_DATA_DIR": str(tmp / "backlog"), "EBIW_ENV": "test",
                                  "EBIW_DESTINATIONS_FILE": str(destinations_file(tmp, orthanc)),
                                  "EBIW_EMR_NOTIFIERS": "local"})
    db = Database(settings.database)
    db.create_schema()
    archive = LocalArchive(settings.archive_root)
    registry = build_registry(settings)
    intake = Intake(db, archive, settings, registry)
    for number in range(count):
        if number % PHOTOS_PER_SESSION == 0:
            session, _ = intake.open_session(SessionRequest.from_json(
                {"patient": {"id": "BENCH", "issuer": "BENCH"}}, "BENCH"), "bench")
        intake.accept_photo(session.id, str(uuid.uuid4()),
                            PHOTOS[number % len(PHOTOS)].read_bytes())
    studies: dict[str, list[bytes]] = {}
    with db.session() as s:
        for instance in s.scalars(select(Instance).order_by(Instance.stored_at)):
            studies.setdefault(instance.study_uid, []).append(archive.read(instance))
    instances = sum(len(files) for files in studies.values())
    before = orthanc.count()
    t0 = time.perf_counter()
    drain(db, archive, registry, threads=2)
    ours = time.perf_counter() - t0
    assert orthanc.count() - before == instances, "not every instance reached the PACS"
    db.engine.dispose()

    batches = [(uid, files[i:i + BATCH]) for uid, files in studies.items()
               for i in range(0, len(files), BATCH)]
    sessions = [requests.Session(), requests.Session()]
    peer_before = peer.count()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: stow(sessions[job[0] % 2], peer.dicomweb, *job[1]),
                      enumerate(batches)))
    direct = time.perf_counter() - t0
    assert peer.count() - peer_before == instances
    return {"ours": ours, "direct": direct, "instances": instances, "studies": len(studies),
            "mb": sum(len(f) for files in studies.values() for f in files) / 1e6}


def main() -> None:
    latency_photos = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    backlog_photos = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as name:
        tmp = Path(name)
        pacs, peer = Orthanc(tmp / "orthanc"), Orthanc(tmp / "orthanc-peer")
        try:
            lat = latency(tmp, pacs, peer, latency_photos)
            drained = backlog(tmp, pacs, peer, backlog_photos)
        finally:
            pacs.stop()
            peer.stop()
    print(f"Orthanc on loopback, {os.cpu_count()} cores; {len(PHOTOS)} real photos "
          f"(colourchart), {PHOTOS_PER_SESSION} per study\n")
    rows = [["PUT /photos (accept, 201)", len(lat["put"]), f"{pct(lat['put'], .5):.0f}",
             f"{pct(lat['put'], .95):.0f}", ""],
            ["201 -> stored in PACS (outbox, STOW-RS)", len(lat["pacs"]),
             f"{pct(lat['pacs'], .5):.0f}", f"{pct(lat['pacs'], .95):.0f}", "<= 2000"]]
    if lat["emr"]:
        rows.append(["201 -> EMR notified (local FHIR store)", len(lat["emr"]),
                     f"{pct(lat['emr'], .5):.0f}", f"{pct(lat['emr'], .95):.0f}", "<= 2000"])
    rows.append(["peer: direct STOW-RS POST of the same file", len(lat["direct"]),
                 f"{pct(lat['direct'], .5):.0f}", f"{pct(lat['direct'], .95):.0f}", ""])
    print(table(["latency", "photos", "p50 ms", "p95 ms", "goal"], rows))
    print()
    ours_s, direct_s = drained["ours"], drained["direct"]
    sizes = [backlog_photos, f"{drained['instances']:.0f}", f"{drained['mb']:.0f}"]
    print(table(["backlog", "photos", "instances", "MB", "seconds", "photos/s", "goal"], [
        [f"outbox drain, 2 worker threads (+{drained['studies']:.0f} EMR notices)", *sizes,
         f"{ours_s:.2f}", f"{backlog_photos / ours_s:.1f}", ">= 20"],
        ["peer: direct STOW-RS, 2 threads", *sizes, f"{direct_s:.2f}",
         f"{backlog_photos / direct_s:.1f}", ""]]))
    p95 = max(pct(lat["pacs"], .95), pct(lat["emr"], .95) if lat["emr"] else 0)
    rate = backlog_photos / ours_s
    print(f"\np95 accept -> delivered {p95:.0f} ms (goal <= 2000): "
          f"{'met' if p95 <= 2000 else 'NOT met'}; drain {rate:.1f} photos/s (goal >= 20): "
          f"{'met' if rate >= 20 else 'NOT met'}; median direct STOW "
          f"{statistics.median(lat['direct']) * 1000:.0f} ms")
    if not lat["emr"]:
        print("EMR: no notifier configured, not measured")


if __name__ == "__main__":
    main()
