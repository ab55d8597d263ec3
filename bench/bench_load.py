"""Ten clinics upload 50 photos each at once to ``ebiw serve`` (gunicorn, 2 workers, SQLite
and the local archive, colour normalization on) on a free loopback port, beside the same
server taking one photo at a time, measured in the same run.

Photos: the three 12 MP phone photos with a colour chart (``oycq_data_*.jpg``, 2.3-3.9 MB).
Each clinic has its own bearer token and session and uploads its batch one photo after
another (``tests/load/harness.py``). Figures:

- 5xx answers (target 0);
- server time: ``Server-Timing`` of each 2xx, from the request body received to the response
  ready (target p95 <= 600 ms); client time: PUT sent to answer read (includes the upload);
- throughput: acknowledged photos / wall time of the load (target >= 6 photos/s);
- peak RSS of each gunicorn worker (``VmHWM``, target <= 256 MiB).

Then the archive is checked: every acknowledged photo stored once, bytes = index.
Usage: .venv/bin/python bench/bench_load.py [PER_CLINIC=50] [SEQUENTIAL=9]
(``EBIW_*`` settings pass through to the server, e.g. ``EBIW_COLOR_MAX_PIXELS=4000000`` for
4 MP normalized copies, ``EBIW_WORKERS``/``EBIW_THREADS`` for gunicorn;
``EBIW_TEST_POSTGRES_URL`` runs it on a fresh PostgreSQL database.)
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

from common import REPO, TESTDATA, table
from sqlalchemy import create_engine, text

sys.path.insert(0, str(REPO))  # the harness is shared with tests/load

from tests.load.harness import (
    Server,
    Stats,
    batches,
    check_archive,
    run_load,
    summary,
)

PHOTOS = sorted((TESTDATA / "colourchart").glob("oycq_data_*.jpg"))
CLINICS = 10
TARGETS = {"http_5xx": "0", "server_p95_ms": "<= 600", "photos_per_s": ">= 6",
           "peak_rss_mib": "<= 256"}


def postgres_database() -> str:
    """A new database on ``EBIW_TEST_POSTGRES_URL``'s server, or "" for SQLite."""
    admin_url = os.environ.get("EBIW_TEST_POSTGRES_URL", "")
    if not admin_url:
        return ""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"ebiw_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return admin.url.set(database=name).render_as_string(hide_password=False)


def main(per_clinic: int, sequential: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ebiw-bench-load-") as tmp, \
            Server(Path(tmp) / "var", postgres_database()) as server:
        print(f"ebiw serve on {server.url}: {server.workers} workers, threads "
              f"{os.environ.get('EBIW_THREADS', 'default')}, "
              f"{'PostgreSQL' if server.env['EBIW_DATABASE_URL'] else 'SQLite'}, "
              f"{len(PHOTOS)} photos of 12 MP", flush=True)
        warm = run_load(server, batches(PHOTOS, 1, 2 * server.workers), 300)  # not counted
        cpu = [server.cpu_seconds()]
        single = run_load(server, batches(PHOTOS, 1, sequential), 600)
        cpu.append(server.cpu_seconds())
        load = run_load(server, batches(PHOTOS, CLINICS, per_clinic), 1800)
        cpu.append(server.cpu_seconds())
        peaks = server.peak_rss_mib()
        report = check_archive(server, warm.uploads + single.uploads + load.uploads)
    one, many = summary(single), summary(load)
    rows = [(key, TARGETS.get(key, ""), one[key], many[key]) for key in (
        "acked", "http_5xx", "http_429", "no_answer", "server_p50_ms", "server_p95_ms",
        "client_p50_ms", "client_p95_ms", "photos_per_s", "seconds")]
    rows.append(("worker_cpu_s_per_photo", "", f"{(cpu[1] - cpu[0]) / len(single.acked):.2f}",
                 f"{(cpu[2] - cpu[1]) / len(load.acked):.2f}"))
    rows.append(("peak_rss_mib", TARGETS["peak_rss_mib"], "",
                 " / ".join(f"{v:.0f}" for v in sorted(peaks.values()))))
    print(table(("figure", "target", f"1 at a time ({sequential})",
                 f"{CLINICS} clinics x {per_clinic}"), rows))
    print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores (other processes share them)")
    print(f"archive: {report.photos} photos, {report.instances} instances, {report.stored} "
          f"files, {report.temp_files} temp files, problems: {report.problems or 'none'}")
    return 1 if report.problems or _lost(load) else 0


def _lost(stats: Stats) -> bool:
    return len(stats.acked) != len(stats.uploads)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    sys.exit(main(*(args + [50, 9][len(args):])))
