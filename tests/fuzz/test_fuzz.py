"""Short, bounded atheris runs of the fuzz harnesses (``README``: Fuzzing, for the long runs).

Each harness runs in its own process for a few seconds from a fresh seed corpus; a crash, a
hang over the per-input timeout or a memory blow-up fails the test with libFuzzer's report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fuzz.seeds import (
    WRISTBAND_SEEDS,
    dicom_seeds,
    image_seeds,
    multipart_seeds,
    write_corpus,
)

pytest.importorskip("atheris")

HARNESSES = REPO / "tests" / "fuzz"


def run_harness(harness: str, corpus: Path, seconds: int, workdir: Path,
                *extra: str) -> int:
    """Run one harness for ``seconds``; return how many inputs it executed."""
    proc = subprocess.run(
        [sys.executable, str(HARNESSES / harness), f"-max_total_time={seconds}",
         "-timeout=10", "-rss_limit_mb=3072", "-print_final_stats=1", *extra, str(corpus)],
        cwd=workdir, capture_output=True, text=True, timeout=seconds + 120, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    report = proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert not list(workdir.glob("crash-*")) and not list(workdir.glob("timeout-*")), report
    runs = re.search(r"Done (\d+) runs", proc.stderr)
    assert runs, report
    return int(runs.group(1))


def test_fuzz_decode_to_dicom(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", image_seeds())
    runs = run_harness("fuzz_decode.py", corpus, 15, tmp_path, "-max_len=65536")
    assert runs > 1000


def test_fuzz_wristband_rules(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", texts=WRISTBAND_SEEDS)
    assert run_harness("fuzz_wristband.py", corpus, 8, tmp_path) > 10_000


def test_fuzz_dicom_readers(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", dicom_seeds())
    runs = run_harness("fuzz_dicom.py", corpus, 10, tmp_path, "-max_len=65536", "-seed=1")
    assert runs > 300


def test_fuzz_multipart_requests(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", multipart_seeds())
    runs = run_harness("fuzz_multipart.py", corpus, 10, tmp_path, "-max_len=65536", "-seed=1")
    assert runs > 100
