"""De-identified research exports, an admin action: ``POST /admin/api/exports/deid`` (JSON) and
the form at ``GET /admin/exports`` (posting to ``/admin/exports/deid``: a preview of what
would be exported first, then the export on confirmation).

The body names the studies (``{"studies": [uid, …], "retain_dates": false,
"include_burned_in": false}``; the form: one UID per line and two check boxes). The export is
written under ``<EBIW_DATA_DIR>/exports/<export id>/`` with its ``deid-report.json``; the answer
is that report with the export id. The export is audited by the workflow (``export.deid``).
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, render_template, request, send_file

from app.durable import disk_full
from app.web import services
from app.web.auth import current_caller, current_login, require
from app.web.errors import error_response
from app.web.shell import confirmed
from app.workflow.deid_export import (
    REPORT_NAME,
    ExportError,
    ExportReport,
    export_deidentified,
    plan_export,
)

log = logging.getLogger(__name__)
bp = Blueprint("exports", __name__, url_prefix="/admin")
_EXPORT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def _folder(export_id: str) -> Path:
    """The folder of an export made here (by this module) in the data directory."""
    return Path(services().settings.data_dir) / "exports" / export_id


def _run(studies: list[str], retain_dates: bool,
         include_burned_in: bool) -> tuple[str, ExportReport]:
    """Run one export into a new folder of the data directory: (export id, report)."""
    svc = services()
    export_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    caller = current_caller()
    report = export_deidentified(
        svc.db, svc.archive, studies, _folder(export_id), export_id=export_id,
        retain_dates=retain_dates, include_burned_in=include_burned_in,
        actor=caller.user if caller else "anonymous", role=caller.role if caller else None,
        client=request.remote_addr, node=svc.settings.node)
    return export_id, report


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api/exports/deid")
@require("admin")
def export_json() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    studies = body.get("studies") if isinstance(body, dict) else None
    flags = [body.get(k, False) for k in ("retain_dates", "include_burned_in")] \
        if isinstance(body, dict) else []
    if not (isinstance(studies, list) and all(isinstance(s, str) for s in studies)
            and all(isinstance(f, bool) for f in flags)):
        return error_response(422, "invalid", 'send {"studies": [Study Instance UID, …], '
                                              '"retain_dates": bool, "include_burned_in": bool}')
    try:
        export_id, report = _run(studies, *flags)
    except ExportError as exc:
        return error_response(422, "invalid", str(exc))
    return _no_store(jsonify({"export": export_id, **report.as_json()})), 201


def _form_page(status: int = 200, **context: Any) -> tuple[Response, int]:
    """The page, not cached; ``context`` may hold the ``form`` values to show again, an
    ``error``, a ``preview`` (an :class:`ExportPlan` to confirm) or a ``result``."""
    login = current_login()
    return _no_store(Response(render_template(
        "exports/deid.html", csrf_token=login.csrf_token if login else "",
        **{"form": None, "error": None, "preview": None, "result": None, **context}))), status


@bp.get("/exports")
@require("admin")
def export_form() -> tuple[Response, int]:
    return _form_page()


@bp.post("/exports/deid")
@require("admin")
def export_submit() -> tuple[Response, int]:
    """Two posts, as an export cannot be taken back: the first writes nothing and answers
    what would be exported (studies found, patients, DICOM instances, the options) with a
    form posting the same values with ``confirmed=yes``; only that second post exports. A
    refused step (422) shows the form again with what was typed and the reason, and so does
    an export that could not be written (507 when the disk is full, else 500)."""
    studies = request.form.get("studies", "").split()
    retain_dates, include_burned_in = (request.form.get(name) == "on"
                                       for name in ("retain_dates", "include_burned_in"))
    form = {"studies": " ".join(studies), "retain_dates": retain_dates,
            "include_burned_in": include_burned_in}
    try:
        if not confirmed():
            return _form_page(preview=plan_export(services().db, studies), form=form)
        export_id, report = _run(studies, retain_dates, include_burned_in)
    except ExportError as exc:
        return _form_page(422, error=str(exc), form=form)
    except OSError as exc:  # the workflow kept nothing of it and audited the failure
        full = disk_full(exc)
        log.error("de-identified export failed: %s", type(exc).__name__)
        return _form_page(507 if full else 500, form=form, error=(
            "the server's storage is full: nothing of the export was kept; try again later"
            if full else "the export could not be written on the server: nothing of it was "
                         "kept; ask the system administrator"))
    return _form_page(result={"export": export_id, **report.as_json()})


@bp.get("/exports/<export_id>.zip")
@require("admin")
def export_download(export_id: str) -> tuple[Response, int] | Response:
    """A finished export (its report written) as one zip file, audited as
    ``export.download`` with the export's id; 404 for any other name. The id names no
    patient, so it may go in the URL."""
    folder = _folder(export_id)
    if not (_EXPORT_ID.match(export_id) and (folder / REPORT_NAME).is_file()):
        return error_response(404, "not_found", "no finished export has this name")
    g.audit_action, g.audit_detail = "export.download", {"export": export_id}
    bundle = tempfile.TemporaryFile()  # noqa: SIM115 - send_file closes it
    with zipfile.ZipFile(bundle, "w") as archive:  # stored: the images are compressed
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, Path(f"deid-{export_id}", path.relative_to(folder)))
    bundle.seek(0)
    return _no_store(send_file(bundle, mimetype="application/zip", as_attachment=True,
                               download_name=f"deid-{export_id}.zip"))
