"""Load and fault harness: ``ebiw serve`` on a free loopback port, clinics uploading batches at
once, kill -9 of a worker or of the whole server, and the archive checked afterwards.

Used by ``tests/load`` (small photos, bounded to well under a minute a run) and by
``bench/bench_load.py`` (12 MP photos). Traffic goes to 127.0.0.1 only; every loop is bounded
by a deadline and the server is stopped by the caller's ``with`` block.

A clinic is one thread with its own bearer token (so per-user rate limits never mix clinics;
``EBIW_RATE_UPLOAD_PER_MINUTE`` is also raised to 100000) and one capture session; it uploads its
photos one after another, as the phone's outbox does, and retries an upload that got no
answer (connection refused or reset, timeout) or a 5xx with the same upload UUID until it is
acknowledged or the deadline passes. An acknowledgement is a 200 or 201 with the stored
instance's SOP Instance UID and DICOM SHA-256.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from app.db.models import Instance, Photo
from app.db.session import Database
from app.workflow.tokens import create_token
from tests.s3_peer import CREDENTIALS, S3Peer, free_port

REPO = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT = 180  # seconds: above gunicorn's 120 s worker timeout


@dataclass
class Upload:
    """One photo of a clinic's batch and what became of it."""

    clinic: int
    photo: Path
    data: bytes
    upload_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    ack: dict[str, Any] | None = None
    status: int | None = None  # of the acknowledging answer: 201 stored now, 200 replayed
    attempts: int = 0
    failures: list[str] = field(default_factory=list)  # "connection", "timeout", "503", ...
    client_ms: float | None = None  # the acknowledged attempt: PUT sent -> answer read
    server_ms: float | None = None  # its Server-Timing: body received -> response ready


@dataclass
class Stats:
    """What the clients saw, all clinics together."""

    uploads: list[Upload]
    started: float
    finished: float

    @property
    def acked(self) -> list[Upload]:
        return [u for u in self.uploads if u.ack is not None]

    def count(self, failure: str) -> int:
        return sum(u.failures.count(failure) for u in self.uploads)

    @property
    def server_errors(self) -> int:
        return sum(1 for u in self.uploads for f in u.failures if f.startswith("5"))


class Server:
    """``ebiw serve --workers N`` in its own process group on a free loopback port."""

    def __init__(self, data_dir: Path, database_url: str, workers: int = 2,
                 peer: S3Peer | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.workers, self.peer = data_dir, workers, peer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "serve.log"
        self.env = {**os.environ, "EBIW_DATA_DIR": str(data_dir),
                    "EBIW_DATABASE_URL": database_url, "EBIW_RATE_UPLOAD_PER_MINUTE": "100000",
                    "EBIW_SERVER_TIMING": "on",
                    **(({**CREDENTIALS, **peer.settings}) if peer else {}), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.database = Database(database_url or
                                 f"sqlite:///{(data_dir / 'ebiw.sqlite3').resolve()}")

    def __enter__(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database.create_schema()
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self.database.engine.dispose()

    def start(self, timeout: float = 90) -> Server:
        """Start the server and return once ``/readyz`` answers 200 (workers booted)."""
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                 "--workers", str(self.workers)], cwd=REPO, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200 and \
                        len(self.worker_pids()) == self.workers:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ebiw serve did not start: see {self.log}")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master) now."""
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def peak_rss_mib(self) -> dict[int, float]:
        """Each live worker's peak resident memory (``VmHWM``), in MiB."""
        peaks = {}
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            kib = next(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmHWM:"))
            peaks[pid] = kib / 1024
        return peaks

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the live workers have used so far."""
        ticks = 0
        for pid in self.worker_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def kill_worker(self, rng: random.Random) -> int:
        """SIGKILL one worker chosen at random; the master starts another. Returns its pid."""
        pid = rng.choice(self.worker_pids())
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_all(self) -> None:
        """SIGKILL the master and every worker at once (the whole process group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the master), SIGKILL of the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def token(self, user: str) -> str:
        """A capture bearer token for ``user``, made directly in the database."""
        return create_token(self.database, user, "capture")


def batches(photos: Sequence[Path], clinics: int, per_clinic: int) -> list[list[Upload]]:
    """``clinics`` batches of ``per_clinic`` uploads cycling through ``photos`` (bytes shared)."""
    data = {p: p.read_bytes() for p in photos}
    return [[Upload(c, photos[(c + i) % len(photos)], data[photos[(c + i) % len(photos)]])
             for i in range(per_clinic)] for c in range(clinics)]


def _server_ms(response: requests.Response) -> float | None:
    timing = response.headers.get("Server-Timing", "")
    return float(timing.split("dur=", 1)[1]) if "dur=" in timing else None


def _attempt(http: requests.Session, url: str, headers: dict[str, str],
             upload: Upload) -> bool:
    """One PUT of ``upload``; True when acknowledged, False when it is to be retried.

    Raises AssertionError on an answer that retrying cannot change (4xx other than 429).
    """
    upload.attempts += 1
    sent = time.perf_counter()
    try:
        response = http.put(url, data=upload.data, headers=headers, timeout=REQUEST_TIMEOUT)
        answer = response.json() if response.status_code in (200, 201) else None
    except requests.Timeout:
        upload.failures.append("timeout")
        return False
    except (requests.RequestException, ValueError):
        # refused or reset, or an answer cut off by a kill (ChunkedEncodingError, a truncated
        # JSON body): no answer either; before, it killed the clinic's thread, whose uploads
        # left were then never sent
        upload.failures.append("connection")
        return False
    if answer is not None:
        upload.ack, upload.status = answer, response.status_code
        upload.client_ms = (time.perf_counter() - sent) * 1000
        upload.server_ms = _server_ms(response)
        return True
    upload.failures.append(str(response.status_code))
    if response.status_code == 429 or response.status_code >= 500:
        return False
    raise AssertionError(f"upload refused: {response.status_code} {response.text[:200]}")


def load_patient(clinic: int) -> dict[str, str]:
    """The patient of a clinic's session: one of its own, unknown to any EMR."""
    return {"id": f"LOAD{clinic:04d}", "issuer": "LOADTEST"}


def run_clinic(base_url: str, token: str, number: int, uploads: list[Upload],
               deadline: float, patient: Callable[[int], dict[str, str]] = load_patient) -> None:
    """Open the clinic's session (for ``patient(number)``), then upload every photo in turn,
    each until acknowledged.

    Guarantees: returns by ``deadline`` (plus one request timeout at most); every upload left
    without ``ack`` was retried until then with the same upload UUID.
    """
    headers = {"Authorization": f"Bearer {token}"}
    session_id = str(uuid.uuid4())
    body = {"id": session_id, "patient": patient(number), "department": f"Clinic {number}"}
    http = requests.Session()
    pause = 0.1
    while time.monotonic() < deadline:  # opening the session is idempotent by its id
        try:
            if http.post(f"{base_url}/api/v1/sessions", json=body, headers=headers,
                         timeout=30).status_code in (200, 201):
                break
        except requests.RequestException:
            pass
        time.sleep(pause)
    put_headers = {**headers, "Content-Type": "image/jpeg"}
    for upload in uploads:
        url = f"{base_url}/api/v1/sessions/{session_id}/photos/{upload.upload_uuid}"
        pause = 0.1
        while time.monotonic() < deadline and not _attempt(http, url, put_headers, upload):
            http.close()  # the kept-alive connection may lead to a dead worker
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def run_load(server: Server, clinic_batches: list[list[Upload]], deadline_s: float,
             fault: Callable[[list[Upload]], None] | None = None,
             patient: Callable[[int], dict[str, str]] = load_patient) -> Stats:
    """Every clinic uploads its batch at once (clinic ``c`` for ``patient(c)``); ``fault`` (if
    any) runs beside them with the list of every upload, to kill at a point of its choosing.
    Returns when all are done."""
    tokens = [server.token(f"load-clinic-{c}") for c in range(len(clinic_batches))]
    deadline = time.monotonic() + deadline_s
    everything = [u for batch in clinic_batches for u in batch]
    started = time.perf_counter()
    threads = [threading.Thread(target=run_clinic, args=(server.url, tokens[c], c, batch,
                                                          deadline, patient), daemon=True)
               for c, batch in enumerate(clinic_batches)]
    for t in threads:
        t.start()
    faulting = threading.Thread(target=fault, args=(everything,), daemon=True) if fault \
        else None
    if faulting:
        faulting.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT)
    finished = time.perf_counter()
    if faulting:
        faulting.join(timeout=120)
    return Stats(everything, started, finished)


def wait_for_acks(uploads: list[Upload], count: int, timeout: float) -> None:
    """Block until ``count`` uploads are acknowledged (or ``timeout`` seconds passed)."""
    deadline = time.monotonic() + timeout
    while sum(u.ack is not None for u in uploads) < count and time.monotonic() < deadline:
        time.sleep(0.02)


@dataclass
class ArchiveReport:
    """The archive after the run, against what the clients were told."""

    photos: int
    instances: int
    stored: int  # files or objects named as instances (``*.dcm``)
    temp_files: int  # leftovers of writes killed before their rename (never instances)
    problems: list[str]


def stored_instances(server: Server, peer: S3Peer | None) -> tuple[dict[str, bytes], int]:
    """Every stored ``.dcm`` (relative path or key -> bytes) and how many temp files lie
    beside them."""
    if peer is not None:
        return {k: v for k, v in peer.objects().items() if k.endswith(".dcm")}, 0
    root = server.data_dir / "archive"
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return ({p.relative_to(root).as_posix(): p.read_bytes() for p in files
             if p.suffix == ".dcm" and not p.name.startswith(".tmp-")},
            sum(p.name.startswith(".tmp-") for p in files))


def check_archive(server: Server, uploads: list[Upload],
                  peer: S3Peer | None = None) -> ArchiveReport:
    """Compare database, stored files and acknowledgements; every mismatch is a problem.

    Checked: each acknowledged upload has exactly one photo row, whose instance (and
    colour-normalized instance) is the acknowledged one and is stored with bytes whose
    SHA-256 is the index's and the acknowledgement's; no index row without its file, no file
    without its index row, no file indexed twice, no row for an upload never sent.
    """
    problems: list[str] = []
    with server.database.session() as db:
        photos = {p.upload_uuid: p for p in db.scalars(select(Photo))}
        instances = {i.sop_uid: i for i in db.scalars(select(Instance))}
    stored, temps = stored_instances(server, peer)
    sent = {u.upload_uuid for u in uploads}
    problems += [f"photo row for an upload never sent: {x}" for x in set(photos) - sent]
    referenced: list[str] = []
    for upload in uploads:
        photo = photos.get(upload.upload_uuid)
        if upload.ack is None:
            continue
        if photo is None:
            problems.append(f"acknowledged upload lost: {upload.upload_uuid}")
            continue
        if photo.sop_uid != upload.ack["sop_instance_uid"] or \
                photo.normalized_sop_uid != upload.ack["normalized_sop_instance_uid"]:
            problems.append(f"instance differs from the acknowledged one: {upload.upload_uuid}")
        if instances.get(photo.sop_uid) is None or \
                instances[photo.sop_uid].sha256 != upload.ack["dicom_sha256"]:
            problems.append(f"index differs from the acknowledgement: {upload.upload_uuid}")
    for photo in photos.values():
        referenced += [uid for uid in (photo.sop_uid, photo.normalized_sop_uid) if uid]
    paths = [i.path for i in instances.values()]
    problems += [f"file indexed twice: {p}" for p in {p for p in paths if paths.count(p) > 1}]
    problems += [f"instance referenced by {referenced.count(uid)} photos: {uid}"
                 for uid in set(referenced) if referenced.count(uid) != 1]
    problems += [f"index row without a photo: {uid}" for uid in set(instances) - set(referenced)]
    for row in instances.values():
        data = stored.get(row.path)
        if data is None:
            problems.append(f"index row without its file: {row.path}")
        elif hashlib.sha256(data).hexdigest() != row.sha256:
            problems.append(f"file differs from its index: {row.path}")
    problems += [f"file without an index row: {p}" for p in set(stored) - set(paths)]
    return ArchiveReport(len(photos), len(instances), len(stored), temps, problems)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def summary(stats: Stats) -> dict[str, Any]:
    """Counts and latencies of a run, as one JSON-able dict."""
    acked = stats.acked
    seconds = stats.finished - stats.started
    server = [u.server_ms for u in acked if u.server_ms is not None]
    client = [u.client_ms for u in acked if u.client_ms is not None]
    return {"uploads": len(stats.uploads), "acked": len(acked),
            "replayed_200": sum(u.status == 200 for u in acked),
            "attempts": sum(u.attempts for u in stats.uploads),
            "no_answer": stats.count("connection") + stats.count("timeout"),
            "http_5xx": stats.server_errors, "http_429": stats.count("429"),
            "seconds": round(seconds, 1), "photos_per_s": round(len(acked) / seconds, 2),
            "server_p50_ms": round(percentile(server, 0.5)) if server else None,
            "server_p95_ms": round(percentile(server, 0.95)) if server else None,
            "client_p50_ms": round(percentile(client, 0.5)) if client else None,
            "client_p95_ms": round(percentile(client, 0.95)) if client else None}
