"""Health and readiness answer without authentication and say what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flask.testing import FlaskClient

from app.factory import create_app
from tests.conftest import BARCODES, REPO


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ok", "checks": {"database": "ok", "archive": "ok"}}


def test_not_ready_when_the_database_is_down(tmp_path: Path) -> None:
    down = create_app({"data_dir": tmp_path, "env": "test",
                       "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    response = down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("failed: ")


ZBAR_MISSING_SCRIPT = """
import ctypes.util, json, sys
real = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if name == "zbar" else real(name)  # no libzbar0
from app.factory import create_app
from app.pipeline import identify
from pathlib import Path
app = create_app({"data_dir": Path(sys.argv[1]), "env": "test"})
app.extensions["ebiw"].db.create_schema()
ready = app.test_client().get("/readyz")
band = identify.read_barcodes(open(sys.argv[2], "rb").read())
print(json.dumps({"zbar": identify.ZBAR_AVAILABLE, "status": ready.status_code,
                  "ready": ready.get_json(), "read": [(b.payload, b.reader) for b in band]}))
"""


def test_the_app_starts_without_libzbar_and_says_so_in_readyz(tmp_path: Path) -> None:
    """pyzbar raises ImportError when libzbar0 is absent (its find_library finds nothing): the
    app starts anyway, reads wristbands with zxing-cpp alone and warns in /readyz."""
    band = BARCODES / "zx_code128-2_05.png"  # Code 128, payload 15182881
    proc = subprocess.run([sys.executable, "-c", ZBAR_MISSING_SCRIPT, str(tmp_path), str(band)],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["zbar"] is False
    assert out["status"] == 200
    assert out["ready"]["status"] == "ok"
    assert out["ready"]["warnings"] == [
        "barcodes: zbar (libzbar0) is not installed; wristbands are read with zxing-cpp alone, "
        "which misses some small or blurred codes"]
    assert [text for text, _ in out["read"]] == ["15182881"]
    assert all(reader.startswith("zxing-cpp:") for _, reader in out["read"])
