"""Gunicorn settings for ``ebiw serve`` and deployments (``-c python:app.gunicorn_conf``).

Workers follow the cores (the photo pipeline is CPU-bound: more processes than cores only adds
memory); two threads each keep a slow upload from blocking a worker, and a worker accepts no
more connections than it has threads (a killed worker fails only its in-flight requests,
``tests/load/test_worker_kill.py``). Logs are JSON lines on
stdout; the access log records the path without its query string, so QIDO-RS matching keys
such as PatientID never reach a log. Application and server records also pass through
``app.logs.PhiRedactingFilter`` (defence in depth), and the third-party loggers that print
datasets, URLs or SQL parameters when verbose are held at WARNING (``app.logs.QUIET_LOGGERS``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import subprocess
import sys
from typing import Any

from app.logs import QUIET_LOGGERS

bind = os.environ.get("EBIW_BIND", "127.0.0.1:8000")  # app.settings.DEFAULT_BIND
workers = int(os.environ.get("EBIW_WORKERS", max(2, multiprocessing.cpu_count())))
worker_class = "gthread"
threads = int(os.environ.get("EBIW_THREADS", 2))
# A worker takes only the connections its threads can serve now; the rest wait in the shared
# listen backlog for whichever worker is free. So a worker that dies (kill -9, OOM) cuts off at
# most its in-flight requests, which the uploaders' idempotent retries complete, not every
# connection it had queued. With no spare slot there is no keep-alive: each connection is
# closed after its answer (nginx in front keeps the phones' connections alive).
worker_connections = threads
keepalive = 0
timeout = 120  # a 20 MB photo over a slow phone link
graceful_timeout = 30
max_requests = 2000  # recycle workers now and then (bounded memory), not all at once
max_requests_jitter = 200
forwarded_allow_ips = os.environ.get("EBIW_FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicornc's control socket belongs to this instance's data dir, not to a per-user folder that
# every instance on the host would share; off where the path is too long for a Unix socket.
control_socket = os.path.abspath(os.path.join(os.environ.get("EBIW_DATA_DIR") or "var",
                                              "gunicorn.ctl"))
control_socket_disable = len(os.fsencode(control_socket)) > 100
accesslog = "-"
errorlog = "-"
access_log_format = (
    '{"log":"access","time":"%(t)s","method":"%(m)s","path":"%(U)s","status":%(s)s,'
    '"bytes":"%(B)s","duration_ms":%(M)s,"remote":"%(h)s"}'
)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "app.logs.JsonFormatter"},
        "access": {"format": "%(message)s"},
    },
    "filters": {"phi": {"()": "app.logs.PhiRedactingFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "stream": "ext://sys.stdout", "filters": ["phi"]},
        # access lines are built from fixed atoms only (no query string); the redactor would
        # mangle their byte counts and durations, so it is not applied there
        "access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stdout"},
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        **{name: {"level": logging.getLevelName(level)} for name, level in QUIET_LOGGERS.items()},
    },
}


# glibc malloc: at most 2 arenas per process, and blocks from 1 MiB up mapped and unmapped
# directly (no dynamic threshold), so a photo's frames go back to the system when it is done
# instead of staying in per-thread arenas (peak RSS per worker; deploy/README.md "Load and sizing").
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def on_starting(server: Any) -> None:
    """Once per server start, in the master before any worker: remove the temporary files
    that writes killed by a crash left behind (``app.durable.sweep_temp_files``)."""
    from app.settings import Settings
    from app.workflow.services import sweep_interrupted_writes

    sweep_interrupted_writes(Settings.from_env())


_listeners: list[subprocess.Popen[bytes]] = []


def when_ready(server: Any) -> None:
    """With ``EBIW_DICOM_SCP_SERVE`` on, start ``ebiw dicom-scp`` beside the workers, and with
    ``EBIW_ADT_LISTEN`` on, ``ebiw adt-listener`` (each its own process: listener threads must
    not live in a master that forks); ended in :func:`on_exit`."""
    from app.settings import Settings

    settings = Settings.from_env()
    for wanted, command in ((settings.dicom_scp_serve, "dicom-scp"),
                            (settings.adt_listen, "adt-listener")):
        if wanted:
            _listeners.append(subprocess.Popen([sys.executable, "-m", "app.cli", command]))


def on_exit(server: Any) -> None:
    """Stop the listeners (C-STORE SCP, ADT) this server started, if any."""
    for process in _listeners:
        process.terminate()
        process.wait(timeout=30)


def post_fork(server: Any, worker: Any) -> None:
    """Tune the worker's allocator (a no-op where the C library is not glibc)."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
