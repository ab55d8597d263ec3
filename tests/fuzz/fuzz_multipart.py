"""atheris harness: untrusted multipart/form-data requests → the app (werkzeug's form parser, our
request guard, the wristband photo upload and the login form).

Run: ``.venv/bin/python tests/fuzz/fuzz_multipart.py -max_len=65536 -max_total_time=600 CORPUS``
(``tests/fuzz/test_fuzz.py`` runs it briefly from real bodies). An input is the Content-Type's
parameters (up to the first newline) and the body after it; it is posted to
``/api/v1/identify`` as a capture user and to ``/login`` without credentials. A crash is a 5xx,
an error answer that is not our JSON error, or any exception out of the app.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import atheris
from harness import main

with atheris.instrument_imports(include=["app"]):
    from app.factory import create_app
    from app.workflow.tokens import create_token

IDENTIFY_STATUSES = {200, 400, 404, 413, 415, 422}
"""Every answer of ``/identify`` to a capture user: found, refused, no patient, too large,
unsupported or unreadable."""

DATA = Path(tempfile.mkdtemp(prefix="fuzz-multipart-"))
atexit.register(shutil.rmtree, DATA, ignore_errors=True)
APP = create_app({"data_dir": DATA, "env": "test", "rate_identify_per_minute": 0})
APP.extensions["ebiw"].db.create_schema()
CLIENT = APP.test_client()
BEARER = {"Authorization": f"Bearer {create_token(APP.extensions['ebiw'].db, 'fuzz', 'capture')}"}


def split(data: bytes) -> tuple[str, bytes]:
    """The Content-Type (multipart/form-data and the input's parameters, without the carriage
    returns no header can carry) and the body."""
    params, _, body = data.partition(b"\n")
    return "multipart/form-data; " + params.replace(b"\r", b"").decode("latin-1"), body


def test_one_input(data: bytes) -> None:
    """One request to each route: a deliberate answer, never a server error."""
    content_type, body = split(data)
    identify = CLIENT.post("/api/v1/identify", data=body, headers={
        **BEARER, "Content-Type": content_type})
    assert identify.status_code in IDENTIFY_STATUSES, (identify.status_code, identify.data)
    if identify.status_code >= 400:
        assert identify.get_json()["error"]["code"], identify.data
    login = CLIENT.post("/login", data=body, headers={"Content-Type": content_type})
    assert login.status_code < 500, (login.status_code, login.data)


if __name__ == "__main__":
    main(test_one_input)
