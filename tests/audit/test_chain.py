"""The audit trail is a hash chain: editing, removing or truncating records is found and named,
and appends from several threads and app instances keep one unbroken chain."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from flask import Flask
from sqlalchemy import delete, select, update

from app.db.models import AuditEvent
from app.workflow import audit
from app.workflow.accounts import create_user
from tests.audit.conftest import NODE, bearer, ebiw, make_app
from tests.conftest import services


def _append(app: Flask, count: int) -> None:
    for number in range(count):
        audit.append(services(app).db, f"user{number}", "session.read",
                     audit.patient_ref(f"MRN{number}", "HOSP"), outcome=audit.SUCCESS)


def test_an_edited_record_breaks_the_chain_and_is_named(audit_app: Flask) -> None:
    db = services(audit_app).db
    _append(audit_app, 5)
    assert audit.verify(db).ok
    with db.session() as s:
        target = s.scalar(select(AuditEvent).where(AuditEvent.seq == 3))
        target_id = target.id
        s.execute(update(AuditEvent).where(AuditEvent.id == target_id)
                  .values(actor="someone-else"))
    result = audit.verify(db)
    assert (result.ok, result.seq, result.id) == (False, 3, target_id)
    assert result.reason == "content does not match its hash"
    proc = ebiw(audit_app, "audit", "verify")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout) == {"ok": False, "records": 3, "broken_at": {
        "seq": 3, "id": target_id, "reason": "content does not match its hash"}}


def test_removed_and_truncated_records_are_found(audit_app: Flask) -> None:
    db = services(audit_app).db
    _append(audit_app, 6)
    with db.session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 6))
    assert audit.verify(db).as_json()["broken_at"] == {
        "seq": 6, "id": None, "reason": "records after 5 are missing (the head is at 6)"}
    with db.session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    broken = audit.verify(db)
    assert (broken.ok, broken.seq, broken.reason) == (False, 3, "record 2 is missing")


def test_the_admin_verifier_answers_over_http(audit_app: Flask) -> None:
    _append(audit_app, 2)
    client = audit_app.test_client()
    answer = client.get("/admin/api/audit/verify", headers=bearer(audit_app, "a", "admin"))
    assert answer.get_json() == {"ok": True, "records": 2, "broken_at": None}
    assert audit.verify(services(audit_app).db).records == 3  # the check itself is recorded


def test_concurrent_appends_from_two_app_instances_keep_one_chain(
        audit_app: Flask, tmp_path: Path, database_url: str) -> None:
    other = make_app(services(audit_app).settings.data_dir, database_url)
    apps = [audit_app, other]
    tokens = [bearer(app, f"viewer{n}", "view") for n, app in enumerate(apps)]
    errors: list[BaseException] = []

    def hammer(app: Flask, headers: dict[str, str], direct: bool) -> None:
        try:
            client = app.test_client()
            for _ in range(25):
                if direct:
                    _append(app, 1)
                else:
                    assert client.get("/dicomweb/studies", headers=headers).status_code == 204
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(app, tokens[n], direct))
               for n, app in enumerate(apps) for direct in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    result = audit.verify(services(audit_app).db)
    assert result.as_json() == {"ok": True, "records": 100, "broken_at": None}
    with services(other).db.session() as s:
        seqs = list(s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
        actions = list(s.scalars(select(AuditEvent.action)))
    assert seqs == list(range(1, 101))
    assert actions.count("dicomweb.search_studies") == 50
    services(other).db.engine.dispose()


def test_cli_exports_the_trail_as_fhir(audit_app: Flask, tmp_path: Path) -> None:
    _append(audit_app, 3)
    out = tmp_path / "trail.json"
    proc = ebiw(audit_app, "audit", "export", "--out", str(out), "--action", "session.")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"output": str(out), "records": 3}
    bundle = json.loads(out.read_text())
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["1", "2", "3"]
    last = audit.search(services(audit_app).db, audit.Filters(), 1)[0]
    assert (last.action, last.actor[:4], last.detail) == ("audit.read", "cli:", {"records": 3})


def test_admin_changes_from_the_command_line_are_audited(audit_app: Flask) -> None:
    assert ebiw(audit_app, "token", "create", "--user", "ward9", "--role", "capture") \
        .returncode == 0
    assert ebiw(audit_app, "token", "create", "--user", "ward9", "--role", "view",
                "--expires-in", "2h").returncode == 0
    assert ebiw(audit_app, "token", "revoke", "--user", "ward9").returncode == 0
    records = audit.search(services(audit_app).db, audit.Filters(action="token."))
    assert [(r.action, r.entities, r.detail, r.actor[:4]) for r in records] == [
        ("token.revoke", ("user:ward9",), {"revoked": 2}, "cli:"),
        ("token.create", ("user:ward9",), {"role": "view", "expires_in_seconds": 7200},
         "cli:"),
        ("token.create", ("user:ward9",), {"role": "capture", "expires_in_seconds": None},
         "cli:")]
    # the account changes the admin page Accounts makes too: the same records from either
    create_user(services(audit_app).db, "ward9", "a long enough password", "capture")
    for command in ("disable", "enable", "unlock"):
        assert ebiw(audit_app, "user", command, "--username", "ward9").returncode == 0
    assert ebiw(audit_app, "user", "disable", "--username", "nobody").returncode == 1
    records = audit.search(services(audit_app).db, audit.Filters(action="user."))
    assert [(r.action, r.entities, r.detail, r.actor[:4], r.node) for r in records] == [
        ("user.unlock", ("user:ward9",), {"was_locked": False}, "cli:", NODE),
        ("user.enable", ("user:ward9",), {"was_disabled": True}, "cli:", NODE),
        ("user.disable", ("user:ward9",), {"was_disabled": False, "sessions_ended": 0}, "cli:",
         NODE)]
