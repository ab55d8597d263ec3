"""Batch import throughput over HTTP, beside the single-photo path measured in the same run.

``ebiw serve`` (gunicorn, 2 workers × 2 threads, SQLite, the local EMR notifier and its
delivery thread, as deployed) on a fresh data dir; 100 photos of 12 MP: 95 real 12 MP phone
photos of colour charts (``testdata/colourchart/oycq_*`` at 12–12.6 MP, reused under new
upload UUIDs) and 5 slip sheets (real barcode photos, ``testdata/barcodes``, enlarged to
4000 × 3000 JPEGs), one slip sheet before each 19 lesions, capture times in EXIF (the
phones' JPEGs otherwise bit-exact, so they pass through as the design intends).

- **batch**: open a batch, PUT the 100 photos with 4 client threads (the page sends 3 at a
  time), read the sorted batch (5 groups, directory lookups), confirm the 5 groups (4 at a
  time, as several reviewers' clicks would). Time from the first PUT to the last
  confirmation: every photo stored in the archive and its deliveries queued. Phases shown.
- **single**: the capture app's path, one photo at a time: POST a session per 20 photos, PUT
  each photo, sequentially.

Each path runs 3 times, alternated, on the same server; the fastest run of each is shown (the
machine is shared: other processes only ever slow a run down). With the colour step
(``EBIW_COLOR_NORMALIZATION`` on: a DERIVED normalized instance per chart photo) at full size
(``on``) and capped at 4 MP (``on-4mp``: ``EBIW_COLOR_MAX_PIXELS=4000000``, the normalized
image at half size), and without (``off``).
Usage: ``.venv/bin/python bench/bench_batch.py [PHOTOS=100] [on|on-4mp|off]`` (default: all).
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import REPO, TESTDATA, table
from PIL import Image, ImageOps

from app.db.session import Database
from app.settings import Settings
from app.workflow.identification import import_patient_file
from app.workflow.tokens import create_token

LESIONS = [TESTDATA / "colourchart" / name for name in (
    "oycq_data_huawei.jpg", "oycq_data_iphone.jpg", "oycq_data_xiaomi.jpg",
    "oycq_meeting_room_xiaomi.jpg", "oycq_window_side_xiaomi.jpg")]
LABELS = {"zx_code128-2_05.png": "15182881", "zx_code128-2_29.png": "42094043",
          "zx_code39-3_06.png": "165340", "zx_code39-3_01.png": "165627",
          "zx_pdf417-2_01.png": "1234567890"}
GROUP = 20
ROUNDS = 3
# mode: (environment of the server, goal in photos/s)
MODES: dict[str, tuple[dict[str, str], float]] = {
    "on": ({"EBIW_COLOR_NORMALIZATION": "1", "EBIW_COLOR_MAX_PIXELS": "0"}, 6.0),
    "on-4mp": ({"EBIW_COLOR_NORMALIZATION": "1", "EBIW_COLOR_MAX_PIXELS": "4000000"}, 6.0),
    "off": ({"EBIW_COLOR_NORMALIZATION": "0"}, 15.0),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stamp(minute: int) -> str:
    return f"2024:05:01 {9 + minute // 60:02d}:{minute % 60:02d}:00"


def retimed(jpeg: bytes, minute: int) -> bytes:
    """The camera's JPEG bit-exact, its EXIF replaced by one holding only DateTimeOriginal."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = stamp(minute)
    payload = exif.tobytes()  # b"Exif\0\0" + TIFF
    segments, at = [], 2
    while jpeg[at] == 0xFF and jpeg[at + 1] not in (0xDA, 0xD9):
        length = struct.unpack(">H", jpeg[at + 2:at + 4])[0]
        if not (jpeg[at + 1] == 0xE1 and jpeg[at + 4:at + 10] == b"Exif\0\0"):
            segments.append(jpeg[at:at + 2 + length])
        at += 2 + length
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return b"\xff\xd8" + app1 + b"".join(segments) + jpeg[at:]


def photo_set(count: int) -> list[bytes]:
    """``count`` photos in capture order: a slip sheet, then lesions, per ``GROUP`` photos.

    Lesions are the phones' JPEGs bit-exact (their EXIF replaced by a capture time); slip
    sheets are the barcode photos enlarged to 12 MP and encoded once."""
    labels = []
    for name in LABELS:
        image = ImageOps.exif_transpose(Image.open(TESTDATA / "barcodes" / name)).convert("RGB")
        out = io.BytesIO()
        image.resize((4000, 3000), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        labels.append(out.getvalue())
    lesions = [p.read_bytes() for p in LESIONS]
    return [retimed(labels[(i // GROUP) % len(labels)] if i % GROUP == 0
                    else lesions[i % len(lesions)], i) for i in range(count)]


class Server:
    """``ebiw serve`` with 2 workers on a fresh data dir."""

    def __init__(self, root: Path, overrides: dict[str, str]) -> None:
        self.root = root
        env = {**os.environ, "EBIW_DATA_DIR": str(root), "EBIW_ENV": "development", **overrides,
               "EBIW_RATE_UPLOAD_PER_MINUTE": "0", "EBIW_DEFAULT_ISSUER": "BENCH",
               "PYTHONPATH": str(REPO)}
        settings = Settings.from_env(env)
        db = Database(settings.database)
        db.create_schema()
        csv = root / "patients.csv"
        csv.write_text("mrn,family,given\n" + "".join(f"{m},BENCH,P{i}\n"
                                                     for i, m in enumerate(LABELS.values())))
        import_patient_file(db, csv, settings=settings)
        self.token = create_token(db, "bench", "capture")
        db.engine.dispose()
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = (root / "serve.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port",
                                      str(port), "--workers", "2"], env=env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            assert self.proc.poll() is None, f"ebiw serve exited; see {root / 'serve.log'}"
            try:
                if requests.get(f"{self.base}/healthz", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        time.sleep(2.0)  # every worker booted

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def run_batch(server: Server, photos: list[bytes]) -> dict[str, float]:
    """The batch path; seconds per phase and in total."""
    http = requests.Session()
    http.headers.update(server.headers)
    batch = http.post(f"{server.base}/api/v1/batches", json={}).json()["id"]

    def put(item: tuple[int, bytes]) -> None:
        order, data = item
        answer = http.put(f"{server.base}/api/v1/batches/{batch}/items/{uuid.uuid4()}",
                          params={"order": order}, data=data,
                          headers={"Content-Type": "image/jpeg"})
        answer.raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, enumerate(photos)))
    t1 = time.perf_counter()
    view = http.get(f"{server.base}/api/v1/batches/{batch}").json()
    groups = [g["id"] for g in view["groups"] if g["items"]]
    assert not view["unsorted"] and len(groups) == -(-len(photos) // GROUP), view["unsorted"]
    t2 = time.perf_counter()

    def confirm(group_id: str) -> int:
        answer = http.post(f"{server.base}/api/v1/batches/{batch}/groups/{group_id}/confirm",
                           json={}, timeout=600)
        answer.raise_for_status()
        return answer.json()["counts"]["stored"]

    with ThreadPoolExecutor(4) as pool:
        stored = sum(pool.map(confirm, groups))
    t3 = time.perf_counter()
    assert stored == len(photos), stored
    return {"upload": t1 - t0, "review": t2 - t1, "confirm": t3 - t2, "total": t3 - t0}


def run_single(server: Server, photos: list[bytes]) -> float:
    """The single-photo path, one request at a time; seconds in total."""
    http = requests.Session()
    http.headers.update(server.headers)
    t0 = time.perf_counter()
    session = ""
    for index, data in enumerate(photos):
        if index % GROUP == 0:
            session = http.post(f"{server.base}/api/v1/sessions", json={
                "patient": {"id": "15182881", "issuer": "BENCH"}}).json()["id"]
        http.put(f"{server.base}/api/v1/sessions/{session}/photos/{uuid.uuid4()}",
                 data=data, headers={"Content-Type": "image/jpeg"}).raise_for_status()
    return time.perf_counter() - t0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    modes = [sys.argv[2]] if len(sys.argv) > 2 else list(MODES)
    photos = photo_set(count)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        for mode in modes:
            overrides, goal = MODES[mode]
            server = Server(Path(tmp) / mode, overrides)
            try:  # alternated, best of ROUNDS: other processes on the machine disturb less
                runs = [(run_batch(server, photos), run_single(server, photos))
                        for _ in range(ROUNDS)]
            finally:
                server.stop()
            phases = min((r[0] for r in runs), key=lambda p: p["total"])
            single = min(r[1] for r in runs)
            rows.append([mode, "batch (4 client threads)", count, f"{phases['total']:.1f}",
                         f"{count / phases['total']:.1f}", f">= {goal:.0f}",
                         f"hold {phases['upload']:.1f} s · review {phases['review']:.1f} s · "
                         f"confirm {phases['confirm']:.1f} s"])
            rows.append([mode, "single photo, sequential", count, f"{single:.1f}",
                         f"{count / single:.1f}", "", "POST session / 20, PUT each"])
    print(f"{count} photos of 12 MP, ebiw serve with 2 gunicorn workers, {os.cpu_count()} cores, "
          f"best of {ROUNDS} runs")
    print(table(["colour step", "path", "photos", "seconds", "photos/s", "goal", "phases"],
                rows))


if __name__ == "__main__":
    main()
