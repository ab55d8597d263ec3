"""The ``ebiw`` command. Commands that process files print one JSON object per line per file."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, ScriptInfo

from app.db.session import Database
from app.durable import disk_full, write_durably
from app.factory import create_app
from app.gateways.patients import ImportFormatError
from app.pipeline.decode import UnreadablePhotoError, prepare_for_dicom
from app.pipeline.dicom import values
from app.pipeline.dicom.builder import (
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.codes import LATERALITY, body_site, body_sites
from app.pipeline.dicom.kos import RejectionReason
from app.pipeline.dicom.sr import DEFAULT_WOUND_LABEL
from app.pipeline.dicom.uids import derived_uuid, uid_from_uuid
from app.pipeline.dicom.values import InvalidValue
from app.pipeline.geometry import (
    GeometryError,
    Point,
    calibrate_photo,
    check_polygon,
)
from app.pipeline.outline import SeedOutsideImageError, outline_photo
from app.settings import Settings
from app.workflow import accounts, audit, corrections, delivery, retention
from app.workflow.accounts import AccountError, create_user
from app.workflow.batch import (
    IMPORT_STORAGE_FULL,
    ImportStatus,
    build_batches,
    import_files,
    write_report,
)
from app.workflow.deid_export import ExportError, export_deidentified
from app.workflow.demo import seed_demo_patients
from app.workflow.identification import (
    import_patient_file,
    read_wristband,
)
from app.workflow.intake import (
    ORIGINAL_SERIES_NUMBER,
    IntakeError,
    InvalidRequest,
    color_step,
    site_and_side,
)
from app.workflow.measurements import (
    LineInput,
    MeasurementError,
    archived_photo,
    calibrate_archived,
    measure_regions,
    store_report,
)
from app.workflow.services import Services, build_services, sweep_interrupted_writes
from app.workflow.tokens import ROLES, create_token, list_tokens, revoke_tokens


def _services() -> Services:
    return current_app.extensions["ebiw"]


def _ready_services() -> Services:
    """The app's services, its database schema upgraded to the newest revision first."""
    services = _services()
    services.db.create_schema()
    return services


@click.group(cls=FlaskGroup, create_app=create_app, add_default_commands=False,
             add_version_option=False, load_dotenv=False)
def cli() -> None:
    """ebiw-capture: encounter-based visible-light imaging."""


def _emit(record: dict[str, object]) -> None:
    click.echo(json.dumps(record, ensure_ascii=False))


@contextlib.contextmanager
def _refusals_exit(*errors: type[Exception]) -> Iterator[None]:
    """Inside, any of ``errors`` prints ``{"error": message}`` and exits 1 (the commands whose
    refusals change nothing)."""
    try:
        yield
    except errors as exc:
        _emit({"error": str(exc)})
        sys.exit(1)


def _cli_actor() -> str:
    """Who runs a command, in audit records: ``cli:<operating system user>``."""
    return f"cli:{getpass.getuser()}"


def _cli_by() -> audit.Actor:
    """The command line as the actor of a change the workflow audits itself."""
    return audit.Actor(_cli_actor(), node=_services().settings.node)


def _audit_admin(action: str, *entities: str, detail: dict[str, object] | None = None) -> None:
    """Record an administrative change made from the command line."""
    services = _services()
    audit.append(services.db, _cli_actor(), action, *entities, outcome=audit.SUCCESS,
                 detail=detail, node=services.settings.node)


@cli.command(with_appcontext=False)
@click.option("--host", default="127.0.0.1", show_default=True, envvar="EBIW_HOST")
@click.option("--port", default=8000, show_default=True, envvar="EBIW_PORT",
              type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the app with gunicorn on HOST:PORT (EBIW_HOST, EBIW_PORT; data under
    EBIW_DATA_DIR, default ./var). Without EBIW_PUBLIC_URL, links point at this address."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    os.environ["EBIW_BIND"] = bind  # the workers' settings derive the public URL from it
    settings = Settings.from_env()  # fail now, with a clear message, on a bad configuration
    os.environ.setdefault("EBIW_DELIVERY_THREAD", "on")  # each web worker delivers too
    click.echo(f"serving {settings.public_url}/ (data in {settings.data_dir})", err=True)
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    args = [gunicorn, "--config", "python:app.gunicorn_conf", "--bind", bind,
            "--workers", str(workers), "app.factory:create_app()"]
    os.execv(gunicorn, args)


@cli.command(with_appcontext=False)
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 32))
@click.option("--drain", is_flag=True,
              help="Exit once nothing is due (rows waiting for a retry stay queued).")
def worker(threads: int, drain: bool) -> None:
    """Deliver queued photos to the PACS destinations and notify the EMR; re-encode the
    video clips uploads staged (VP8/VP9 WebM…) to H.264 and store them.

    Any number of workers may run at once, on any node sharing the database. Stops after the
    current batch on SIGTERM or Ctrl-C; prints one JSON line with what it handled.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    svc = build_services(Settings.from_env())
    svc.db.create_schema()
    sweep_interrupted_writes(svc.settings)
    svc.intake.sweep_staged_clips()
    if drain:
        _emit({"handled": delivery.drain(svc.db, svc.archive, svc.registry, threads,
                                         jobs=svc.worker_jobs()),
               "counts": delivery.delivery_counts(svc.db)})
        return
    background = delivery.BackgroundDelivery(svc.db, svc.archive, svc.registry,
                                             threads, jobs=svc.worker_jobs()).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: background.stop(0))
    background.wait()
    background.stop()
    _emit({"handled": background.handled, "counts": delivery.delivery_counts(svc.db)})


def _listener_services(configured: Callable[[Settings], bool], missing: str) -> Services:
    """The services of a long-running listener, with INFO logging, the schema created and
    interrupted writes swept; a usage error saying ``missing`` unless ``configured``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    svc = build_services(Settings.from_env())
    if not configured(svc.settings):
        raise click.UsageError(missing)
    svc.db.create_schema()
    sweep_interrupted_writes(svc.settings)
    return svc


@cli.command("dicom-scp", with_appcontext=False)
@click.option("--host", default=None, help="Address to listen on [EBIW_DICOM_SCP_HOST, "
              "default 127.0.0.1].")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port [EBIW_DICOM_SCP_PORT, default 11112].")
def dicom_scp(host: str | None, port: int | None) -> None:
    """Receive DICOM objects from other devices by C-STORE (AE title EBIW_DICOM_SCP_AET,
    callers limited to EBIW_DICOM_SCP_ALLOWED_AETS): each is reconciled with the patient
    directory, stored and delivered like a photo. Runs until stopped."""
    from app.workflow import dicom_scp as scp

    svc = _listener_services(lambda s: bool(s.dicom_scp_allowed_aet_list),
                             "set EBIW_DICOM_SCP_ALLOWED_AETS to the calling AE titles of the "
                             "devices allowed to store")
    scp.start(svc.settings, svc.dicom_intake, host or svc.settings.dicom_scp_host,
              port or svc.settings.dicom_scp_port)


@cli.command("adt-listener", with_appcontext=False)
@click.option("--host", default=None, help="Address to listen on [EBIW_ADT_LISTENER_HOST, "
              "default 127.0.0.1].")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port [EBIW_ADT_LISTENER_PORT, default 2575].")
def adt_listener(host: str | None, port: int | None) -> None:
    """Receive HL7 v2 ADT^A40 (merge patient) over MLLP from the EMR: the studies of each merged
    patient move to the surviving one (README "Patient merge"). Senders are limited to the
    MSH-3 applications of EBIW_ADT_ALLOWED_SENDERS (and EBIW_ADT_ALLOWED_NETWORKS). Runs until
    stopped."""
    from app.gateways.emr.adt import MllpListener
    from app.workflow.merge import AdtMerge

    svc = _listener_services(lambda s: bool(s.adt_allowed_sender_list),
                             "set EBIW_ADT_ALLOWED_SENDERS to the sending applications (MSH-3) "
                             "allowed to send ADT messages")
    address = (host or svc.settings.adt_listener_host, port or svc.settings.adt_listener_port)
    listener = MllpListener(address, AdtMerge(svc).answer, svc.settings.adt_allowed_network_list)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger(__name__).info("ADT listener (MLLP) on %s:%d", *address)
    with listener, contextlib.suppress(KeyboardInterrupt):
        listener.serve_forever()


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration (run it before a new version
    starts); print from which revision to which. Warns if the database still differs from the
    models (e.g. columns an old version never added)."""
    database = _services().db
    click.echo(database.create_schema().describe())
    differences = database.schema_differences()
    if differences:
        click.echo(f"warning: the database differs from the models in {len(differences)} "
                   f"place(s): {differences!r}", err=True)


@db.command("current")
def db_current() -> None:
    """Print the revision the database is at ("none": never upgraded)."""
    click.echo(_services().db.schema_revision() or "none")


@db.command("revision")
@click.option("--message", "-m", required=True, help="What the revision changes.")
def db_revision(message: str) -> None:
    """Write the next migration, autogenerated from the models against the configured
    database (development checkouts: it lands in app/db/migrations/versions/); read and
    tidy it before committing."""
    click.echo(str(_services().db.new_revision(message)))


@cli.command()
def demo() -> None:
    """Seed a few synthetic demo patients (with open encounters) into the local index."""
    services = _ready_services()
    added = seed_demo_patients(services.db, services.settings.default_issuer)
    click.echo(f"demo patients: {added} added")


@cli.group()
def token() -> None:
    """API tokens for devices and integrations."""


_DURATION = re.compile(r"(\d+)([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(_ctx: click.Context, _param: click.Parameter,
              value: str | None) -> timedelta | None:
    """``30d``, ``12h``, ``90m`` or ``2w`` as a lifetime (None when not given)."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter("a positive number of minutes, hours, days or weeks: 90m, "
                                 "12h, 30d, 2w")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


@token.command("create")
@click.option("--user", required=True)
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--expires-in", "expires_in", callback=_duration,
              help="Lifetime: 90m, 12h, 30d, 2w (default: until revoked).")
def token_create(user: str, role: str, expires_in: timedelta | None) -> None:
    """Create a bearer token and print it (it is shown only this once)."""
    services = _ready_services()
    secret = create_token(services.db, user, role, expires_in)
    _audit_admin("token.create", f"user:{user}", detail={
        "role": role, "expires_in_seconds": int(expires_in.total_seconds()) if expires_in
        else None})
    click.echo(secret)


@token.command("list")
def token_list() -> None:
    """One JSON line per token: number, user, role, created, revoked, expires, last used (to
    the minute), and whether it is expired (never the token)."""
    services = _ready_services()
    now = datetime.now(UTC)

    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    for t in list_tokens(services.db):
        _emit({"id": t.id, "user": t.user, "role": t.role,
               "created_at": t.created_at.isoformat(), "revoked_at": when(t.revoked_at),
               "expires_at": when(t.expires_at), "last_used_at": when(t.last_used_at),
               "expired": t.expired(now)})


@token.command("revoke")
@click.option("--id", "token_id", type=int, help="The token's number (ebiw token list).")
@click.option("--user", help="Revoke every token of this user.")
def token_revoke(token_id: int | None, user: str | None) -> None:
    """Revoke a token by number, or all tokens of a user (refused from the next request)."""
    if (token_id is None) == (user is None):
        raise click.UsageError("give --id or --user")
    services = _ready_services()
    count = revoke_tokens(services.db, token_id=token_id, user=user, by=_cli_by())
    if count == 0:
        raise click.ClickException("no live token matched")
    click.echo(f"revoked {count} token(s)")


@cli.group()
def user() -> None:
    """Local accounts of the capture app."""


@user.command("create")
@click.option("--username", required=True)
@click.option("--role", required=True, type=click.Choice(ROLES))
def user_create(username: str, role: str) -> None:
    """Create an account; the password is read from standard input or prompted for."""
    password = _read_password()
    _change_account(lambda db: create_user(db, username, password, role),
                    f"user {username} created ({role})",
                    audited=("user.create", username, {"role": role}))


def _change_account(change: Callable[[Database], object], done: str,
                    audited: tuple[str, str, dict[str, object] | None] | None = None) -> None:
    """Apply ``change`` to the upgraded database; an ``AccountError`` becomes the command's
    error (exit 1, nothing audited), else ``done`` is printed. ``audited`` (action, username,
    detail) is recorded here for a change that does not audit itself."""
    services = _ready_services()
    try:
        change(services.db)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    if audited is not None:
        action, username, detail = audited
        _audit_admin(action, f"user:{username}", detail=detail)
    click.echo(done)


def _read_password() -> str:
    if sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\r\n")


@user.command("password")
@click.option("--username", required=True)
def user_password(username: str) -> None:
    """Set a local account's password (standard input or prompt); its sessions end, its
    lockout is lifted."""
    password = _read_password()
    _change_account(lambda db: accounts.set_password(db, username, password),
                    f"password of {username} changed",
                    audited=("user.password", username, None))


def _disabled_command(name: str, disabled: bool, help_text: str) -> None:
    """Register ``ebiw user <name> --username U``: the account's disabled flag becomes
    ``disabled`` (its sessions end when it is disabled), audited as ``user.<name>`` by the
    workflow."""

    @user.command(name, help=help_text)
    @click.option("--username", required=True)
    def command(username: str) -> None:
        _change_account(lambda db: accounts.set_disabled(db, username, disabled, by=_cli_by()),
                        f"user {username} {name}d")


_disabled_command("disable", True,
                  "Disable an account: its sessions end now and it can no longer log in.")
_disabled_command("enable", False, "Enable a disabled account again.")


@user.command("unlock")
@click.option("--username", required=True)
def user_unlock(username: str) -> None:
    """Lift a lockout after failed logins."""
    services = _ready_services()
    found = accounts.unlock(services.db, username, by=_cli_by())
    click.echo(f"user {username} {'unlocked' if found else 'was not locked'}")


@user.command("list")
def user_list() -> None:
    """One JSON line per account: username, role, kind, created, disabled, locked until."""
    services = _ready_services()
    for u in accounts.list_users(services.db):
        _emit({"username": u.username, "role": u.role, "kind": u.kind,
               "created_at": u.created_at.isoformat(), "disabled": u.disabled,
               "locked_until": u.locked_until.isoformat() if u.locked_until else None})


def _birth_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError as exc:
        raise click.BadParameter("use YYYYMMDD") from exc


def _dicom_value(check: Callable[..., str | None],
                 ) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """An option callback: the value as ``check`` (a rule of :mod:`app.pipeline.dicom.values`)
    takes it, stripped (a required option may not be blank); a usage error naming the option
    when the attribute cannot hold it."""
    def callback(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check(value, param.opts[0], required=param.required)
        except InvalidValue as exc:
            raise click.BadParameter(exc.requirement) from exc
    return callback


_LO_OPTION = _dicom_value(values.text)
_ID_OPTION = _dicom_value(values.identifier)
_PN_OPTION = _dicom_value(values.person_name)


def _site(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in body_sites():
        raise click.BadParameter("not a SNOMED CT code from the body-site table")
    return value


def _check_side(site_code: str | None, laterality: str | None) -> None:
    """The API's rule (`site_and_side`) for --body-site and --laterality, whose options checked
    the code and the value: a paired site needs R, L or B (`click.BadParameter` otherwise)."""
    try:
        site_and_side({"body_site": site_code, "laterality": laterality})
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message, param_hint="'--laterality'") from exc


@cli.command(with_appcontext=False)
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--patient-id", required=True, callback=_ID_OPTION)
@click.option("--issuer", required=True, callback=_ID_OPTION)
@click.option("--name", callback=_PN_OPTION, help="FAMILY^GIVEN")
@click.option("--birth-date", callback=_birth_date, help="YYYYMMDD")
@click.option("--sex", type=click.Choice(["F", "M", "O"]))
@click.option("--body-site", "site_code", callback=_site, help="SNOMED CT code")
@click.option("--laterality", type=click.Choice(list(LATERALITY)))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def dicomize(photos: tuple[str, ...], patient_id: str, issuer: str, name: str | None,
             birth_date: date | None, sex: str | None, site_code: str | None,
             laterality: str | None, out_dir: str) -> None:
    """Wrap photos as DICOM VL Photographic images (one study per run) into --out."""
    _check_side(site_code, laterality)
    settings = Settings.from_env()
    session = uuid.uuid4()
    patient = PatientInfo(patient_id, issuer, name, birth_date, sex)
    study = StudyInfo(uid_from_uuid(session, settings.uid_prefix), datetime.now().astimezone())
    series = SeriesInfo(uid_from_uuid(derived_uuid(session, "series:original"),
                                      settings.uid_prefix), ORIGINAL_SERIES_NUMBER,
                        body_site=body_site(site_code) if site_code else None,
                        laterality=laterality, institution=settings.institution_name or None)
    out = Path(out_dir)
    failed = False
    for number, path in enumerate(photos, start=1):
        try:
            photo = prepare_for_dicom(Path(path).read_bytes(), settings.max_pixels)
        except (OSError, UnreadablePhotoError) as exc:
            failed = True
            _emit({"input": path, "error": str(exc) if isinstance(exc, UnreadablePhotoError)
                   else f"cannot read the file ({exc.strerror})"})
            continue
        sop_uid = uid_from_uuid(uuid.uuid4(), settings.uid_prefix)
        data = build_vl_photo(photo, patient, study, series, InstanceInfo(sop_uid, number))
        target = out / f"{sop_uid}.dcm"
        write_durably(target, data)
        _emit({"input": path, "output": str(target), "sop_instance_uid": sop_uid,
               "study_instance_uid": study.uid, "passthrough": photo.passthrough})
    sys.exit(1 if failed else 0)


@cli.command(with_appcontext=False)
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def normalize(photos: tuple[str, ...], out_dir: str) -> None:
    """Colour-normalize photos from the chart in the frame; write <name>.normalized.jpg."""
    settings = Settings.from_env()
    out = Path(out_dir)
    failed = False
    for path in photos:
        try:
            outcome = color_step(Path(path).read_bytes(), settings)
        except (OSError, UnreadablePhotoError) as exc:
            failed = True
            _emit({"file": path, "error": str(exc) if isinstance(exc, UnreadablePhotoError)
                   else f"cannot read the file ({exc.strerror})"})
            continue
        target = None
        if outcome.jpeg is not None:
            target = out / f"{Path(path).stem}.normalized.jpg"
            write_durably(target, outcome.jpeg)
        _emit({"file": path, **outcome.as_json(), "output": str(target) if target else None})
    sys.exit(1 if failed else 0)


def _points(value: str, option: str) -> list[Point]:
    """``X1,Y1,X2,Y2,...`` as (x, y) pairs; a `click.BadParameter` for anything else."""
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers separated by commas",
                                 param_hint=option) from None
    if len(numbers) % 2 or not all(map(math.isfinite, numbers)):
        raise click.BadParameter(f"{value!r}: expected x,y pairs of finite numbers",
                                 param_hint=option)
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def _lines(_ctx: click.Context, _param: click.Parameter,
           values: tuple[str, ...]) -> list[tuple[Point, Point]]:
    lines = []
    for value in values:
        points = _points(value, "--line")
        if len(points) != 2:
            raise click.BadParameter(f"{value!r}: a line is X1,Y1,X2,Y2", param_hint="--line")
        if points[0] == points[1]:
            raise click.BadParameter(f"{value!r}: the two ends are the same point",
                                     param_hint="--line")
        lines.append((points[0], points[1]))
    return lines


def _polygons(_ctx: click.Context, _param: click.Parameter,
              values: tuple[str, ...]) -> list[list[Point]]:
    polygons = []
    for value in values:
        points = _points(value, "--polygon")
        try:
            check_polygon(points)
        except GeometryError as exc:
            raise click.BadParameter(f"{value!r}: {exc}", param_hint="--polygon") from None
        polygons.append(points)
    return polygons


@cli.command(with_appcontext=False)
@click.argument("photos", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--line", "lines", multiple=True, callback=_lines, metavar="X1,Y1,X2,Y2",
              help="A segment to measure in mm (repeatable).")
@click.option("--polygon", "polygons", multiple=True, callback=_polygons,
              metavar="X1,Y1,X2,Y2,X3,Y3[,...]",
              help="A simple polygon whose area (mm²) and perimeter to measure (repeatable).")
@click.option("--instance", "sop_uid", metavar="SOP_INSTANCE_UID",
              help="Measure this archived photo instead of files, and store the result as a "
                   "DICOM SR in its study (delivered like any instance).")
@click.option("--wound", "wound_label", default=DEFAULT_WOUND_LABEL, show_default=True,
              help="With --instance: the wound's label, its tracking identifier across visits.")
@click.option("--observer", default=None,
              help="With --instance: who measured, as a DICOM name (default: the OS user).")
def measure(photos: tuple[str, ...], lines: list[tuple[Point, Point]],
            polygons: list[list[Point]], sop_uid: str | None, wound_label: str,
            observer: str | None) -> None:
    """Measure on the chart's plane, tilt-corrected, assuming the region lies in that plane.

    Coordinates are pixels of the photo as displayed (EXIF orientation applied), origin
    top-left, x right, y down. Prints one JSON object per photo: lines_mm and areas_mm2 in
    the order given, their standard uncertainties, the calibration, and warnings. A photo
    without a usable chart, or a point outside it, gets an error, lines_mm null and a
    non-zero exit status.

    With --instance, the photo is an archived instance (its stored pixels) and the
    measurements are stored as a TID 1500 SR in a new series of its study, with a colour
    presentation state drawing them in another; the JSON adds sr_sop_instance_uid,
    pr_sop_instance_uid, tracking_uid and wound. Any error stores nothing.
    """
    if sop_uid is not None:
        if photos:
            raise click.UsageError("give photo files or --instance, not both")
        if not (lines or polygons):
            raise click.UsageError("--instance needs at least one --line or --polygon")
        app = click.get_current_context().ensure_object(ScriptInfo).load_app()
        with app.app_context():
            _measure_instance(sop_uid, lines, polygons, wound_label,
                              observer or getpass.getuser())
        return
    if not photos:
        raise click.UsageError("give photo files, or --instance SOP_INSTANCE_UID")
    settings = Settings.from_env()
    failed = False
    for path in photos:
        record: dict[str, object] = {"file": path, "lines_mm": None, "areas_mm2": None,
                                     "calibration": None}
        try:
            calibration = calibrate_photo(Path(path).read_bytes(),
                                          max_pixels=settings.max_pixels)
            record["calibration"] = calibration.as_json()
            record.update(measure_regions(calibration, [LineInput(p, q) for p, q in lines],
                                          polygons).summary())
        except OSError as exc:
            record["error"] = f"cannot read the file ({exc.strerror})"
        except (UnreadablePhotoError, GeometryError) as exc:
            record["error"] = str(exc)
        failed = failed or "error" in record
        _emit(record)
    sys.exit(1 if failed else 0)


def _measure_instance(sop_uid: str, lines: list[tuple[Point, Point]],
                      polygons: list[list[Point]], wound_label: str, observer: str) -> None:
    """``measure --instance``: measure the archived photo, store the SR, print the record
    (exit 1 with an error and nothing stored when it cannot be measured)."""
    services = _ready_services()
    record: dict[str, object] = {"instance": sop_uid, "lines_mm": None, "areas_mm2": None,
                                 "calibration": None}
    try:
        photo = archived_photo(services, sop_uid)
        calibration = calibrate_archived(services, photo)
        record["calibration"] = calibration.as_json()
        measured = measure_regions(calibration, [LineInput(p, q) for p, q in lines], polygons)
        record.update(measured.summary())
        stored = store_report(services, photo, measured.lines, measured.polygons,
                              calibration=calibration, wound_label=wound_label,
                              observer=observer, actor=_cli_actor())
    except (MeasurementError, UnreadablePhotoError, GeometryError, ValueError) as exc:
        _emit({**record, "error": str(exc)})
        sys.exit(1)
    _emit({**record, "wound": wound_label, "tracking_uid": stored.tracking_uid,
           "sr_sop_instance_uid": stored.sop_uid, "sr_series_instance_uid": stored.series_uid,
           "pr_sop_instance_uid": stored.presentation_sop_uid,
           "study_instance_uid": stored.study_uid})


@cli.group()
def correct() -> None:
    """Corrections (IHE IOCM): reject instances, move a study to the right patient."""


_REASONS = [r.value for r in RejectionReason if r is not RejectionReason.RETENTION]


@correct.command("reject")
@click.option("--instance", "sop_uid", required=True, metavar="SOP_INSTANCE_UID")
@click.option("--reason", required=True, type=click.Choice(_REASONS),
              help="quality (113001), patient-safety (113037) or worklist (113038).")
def correct_reject(sop_uid: str, reason: str) -> None:
    """Reject an archived instance (a photo with its colour-normalized version) by a rejection
    note sent to every PACS; prints {"rejected": [...], "kos_sop_instance_uid", ...}. Any
    error changes nothing and exits 1."""
    services = _ready_services()
    with _refusals_exit(corrections.CorrectionError):
        done = corrections.reject(services, sop_uid, RejectionReason(reason),
                                  actor=_cli_actor())
    _emit(_rejection_json(done))


@correct.command("patient")
@click.option("--study", "study_uid", required=True, metavar="STUDY_INSTANCE_UID")
@click.option("--patient-id", required=True, metavar="MRN")
@click.option("--issuer", required=True, help="Issuer of Patient ID of the right patient.")
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
def correct_patient(study_uid: str, patient_id: str, issuer: str, reason: str) -> None:
    """Move a study to the right patient (who must be in the patient directory): corrected
    copies in a new study, the originals rejected (113037); prints the new and rejected UIDs.
    Any error changes nothing and exits 1."""
    services = _ready_services()
    with _refusals_exit(corrections.CorrectionError):
        moved = corrections.move_to_patient(services, study_uid, patient_id, issuer, reason,
                                            actor=_cli_actor())
    _emit({"old_study_instance_uid": moved.old_study_uid,
           "new_study_instance_uid": moved.new_study_uid, "copies": moved.copies,
           **_rejection_json(moved.rejection)})


def _rejection_json(done: corrections.Rejection) -> dict[str, object]:
    return {"rejected": list(done.rejected), "kos_sop_instance_uid": done.kos_sop_uid,
            "reason": done.reason.value, "document_title": done.reason.document_title.value,
            "study_instance_uid": done.study_uid,
            "cancelled_deliveries": done.cancelled_deliveries}


@cli.group("retention")
def retention_group() -> None:
    """Retention: the dry-run report, the purge, legal holds (rules: EBIW_RETENTION_RULES_FILE)."""


@retention_group.command("report")
def retention_report() -> None:
    """Dry run, changes nothing: prints {"as_of", "studies", "due": [...], "held": [...],
    "undetermined": [...]}, each entry a study's UID, rule, due date and file count."""
    services = _ready_services()
    with _refusals_exit(retention.RetentionError):
        _emit(retention.report(services).as_json())


@retention_group.command("purge")
@click.option("--study", "studies", multiple=True, metavar="STUDY_INSTANCE_UID",
              help="Purge only these studies (each must be due); default: all that are due.")
def retention_purge(studies: tuple[str, ...]) -> None:
    """Purge what the report lists as due: a 113039 rejection note to every PACS, the files
    deleted, audited; prints {"purged": [...]}. Legal holds are never purged."""
    services = _ready_services()
    with _refusals_exit(retention.RetentionError):
        done = retention.purge(services, actor=_cli_actor(), studies=list(studies) or None)
    _emit({"purged": [p.as_json() for p in done]})


def _hold_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed((
            click.option("--study", "study_uid", metavar="STUDY_INSTANCE_UID"),
            click.option("--patient-id", metavar="MRN", help="A patient: every study of theirs."),
            click.option("--issuer", help="Issuer of Patient ID (with --patient-id)."))):
        command = option(command)
    return command


@retention_group.command("hold")
@_hold_options
@click.option("--reason", required=True, help="Why (kept with the hold and audited).")
def retention_hold(study_uid: str | None, patient_id: str | None, issuer: str | None,
                   reason: str) -> None:
    """Put a study, or every study of a patient, on legal hold: never purged until released."""
    _hold_action(lambda services, target: retention.set_hold(
        services, target, reason, actor=_cli_actor()), study_uid, patient_id, issuer, True)


@retention_group.command("release")
@_hold_options
def retention_release(study_uid: str | None, patient_id: str | None,
                      issuer: str | None) -> None:
    """Release the legal hold of a study or a patient."""
    _hold_action(lambda services, target: retention.release_hold(
        services, target, actor=_cli_actor()), study_uid, patient_id, issuer, False)


def _hold_action(action: Callable[[Services, retention.HoldTarget], None],
                 study_uid: str | None, patient_id: str | None, issuer: str | None,
                 held: bool) -> None:
    """Run a hold or release; prints {"scope", "held", "study_instance_uid"?} or an error."""
    services = _ready_services()
    with _refusals_exit(retention.RetentionError):
        target = retention.HoldTarget(study_uid, issuer, patient_id)
        action(services, target)
    _emit({"scope": target.scope, "held": held,
           **({"study_instance_uid": study_uid} if study_uid else {})})


def _seed(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value)
    if match is None:
        raise click.BadParameter("expected X,Y: two whole numbers of pixels, e.g. 240,310")
    return int(match[1]), int(match[2])


@cli.command(with_appcontext=False)
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--seed", required=True, callback=_seed, metavar="X,Y",
              help="A point inside the wound, in pixels of the image as displayed.")
def outline(image: str, seed: tuple[int, int]) -> None:
    """Propose the outline of the wound under --seed: {"file", "polygon": [[x, y], ...]}."""
    settings = Settings.from_env()
    try:
        polygon = outline_photo(Path(image).read_bytes(), seed, settings.max_pixels)
    except (OSError, UnreadablePhotoError, SeedOutsideImageError) as exc:
        _emit({"file": image, "error": f"cannot read the file ({exc.strerror})"
               if isinstance(exc, OSError) else str(exc)})
        sys.exit(1)
    _emit({"file": image, "polygon": [list(point) for point in polygon]})


@cli.group()
def patients() -> None:
    """The local patient index."""


@patients.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--issuer", callback=_ID_OPTION,
              help="Issuer of Patient ID for patients whose file names none "
                   "(default: EBIW_DEFAULT_ISSUER)")
def patients_import(files: tuple[str, ...], issuer: str | None) -> None:
    """Import FHIR R4 Bundles (JSON) or CSV files into the local patient index.

    Re-importing a file changes nothing; nothing absent from a file is deleted. CSV columns:
    mrn, issuer, family, given, birth_date, sex, encounter, encounter_status, encounter_start,
    department (header row required, only mrn is mandatory).
    """
    services = _ready_services()
    failed = False
    for name in files:
        try:
            counts = import_patient_file(services.db, Path(name), settings=services.settings,
                                         issuer=issuer)
        except ImportFormatError as exc:
            failed = True
            _emit({"file": name, "error": str(exc)})
            continue
        except OSError as exc:
            failed = True
            _emit({"file": name, "error": f"cannot read the file ({exc.strerror})"})
            continue
        _emit({"file": name, **dataclasses.asdict(counts)})
    sys.exit(1 if failed else 0)


@patients.command("merge-replaced")
def patients_merge_replaced() -> None:
    """Move the studies of every patient the patient directory says was replaced by another
    (FHIR Patient.link replaced-by: merged in the EMR) to the patient that replaced them; run
    it on a schedule. Prints {"checked", "merged", "moved": {old Study UID: new}, "left"};
    exits 1 when a study could not be moved (run it again to finish)."""
    from app.workflow.merge import MergeError, merge_replaced

    with _refusals_exit(MergeError):
        report = merge_replaced(_ready_services())
    _emit(dataclasses.asdict(report))


def _natural(path: Path) -> list[object]:
    """Sort key: names compared with their digit runs as numbers (IMG_9 before IMG_10)."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", path.as_posix())]


def _import_inputs(paths: tuple[str, ...]) -> list[Path]:
    """Files as given, folders walked (hidden entries skipped), each folder in name order."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted((p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(path).parts)), key=_natural)
        else:
            files.append(path)
    return files


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--patient-id", callback=_ID_OPTION,
              help="Every photo is this patient's (no barcode sorting).")
@click.option("--issuer", callback=_ID_OPTION, help="Issuer of Patient ID of --patient-id.")
@click.option("--department", callback=_LO_OPTION,
              help="Institutional Department Name of the studies.")
@click.option("--body-site", "site_code", callback=_site,
              help="SNOMED CT code of the photos' body site (GET /api/v1/body-sites).")
@click.option("--laterality", type=click.Choice(list(LATERALITY)),
              help="Side of the body site; R, L or B for a paired one.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False),
              help="Write a JSON report of every file here.")
def import_command(paths: tuple[str, ...], patient_id: str | None, issuer: str | None,
                   department: str | None, site_code: str | None, laterality: str | None,
                   report_file: str | None) -> None:
    """Import photos (files, or folders) as one batch, like the batch page does.

    Without --patient-id, photos are sorted by their label frames (slip sheets, wristbands)
    in capture order; a group whose label the patient directory resolves to exactly one
    patient is stored as one study, the others are reported unsorted. --body-site and
    --laterality are each study's, as the batch page confirms a group; without a body site,
    a group holding a video clip (DICOM requires a video's anatomic region) is held for the
    batch review. Running again on the same files stores nothing twice and finishes an
    interrupted import. Standard output: one JSON line per file (status, patient by MRN,
    SOP Instance UIDs, or why not); standard error: one line per file as it is held.
    """
    if (patient_id is None) != (issuer is None):
        raise click.UsageError("give --patient-id and --issuer together")
    _check_side(site_code, laterality)
    services = _ready_services()
    batches = build_batches(services.db, services.settings, services.intake)
    try:
        report = import_files(
            batches, _import_inputs(paths), user=_cli_actor(),
            patient=(patient_id, issuer) if patient_id and issuer else None,
            department=department, body_site=site_code, laterality=laterality,
            progress=lambda record: click.echo(json.dumps(record, ensure_ascii=False), err=True))
    except IntakeError as exc:
        raise click.ClickException(exc.message) from exc
    except OSError as exc:
        if disk_full(exc):
            raise click.ClickException(IMPORT_STORAGE_FULL) from exc
        raise
    stored = [f for f in report.files if f["status"] == ImportStatus.STORED and f.get("new")]
    patients = {(f["patient"]["mrn"], f["patient"]["issuer"]) for f in stored}
    studies = {f["study_instance_uid"] for f in stored}
    audit.append(services.db, _cli_actor(), "batch.import", f"batch:{report.batch_id}",
                 *(audit.patient_ref(mrn, iss) for mrn, iss in sorted(patients)),
                 *(audit.study_ref(uid) for uid in sorted(studies)),
                 outcome=audit.SUCCESS if report.ok else audit.FAILED,
                 detail=report.as_json()["counts"], node=services.settings.node)
    for record in report.files:
        _emit(record)
    if report_file:
        write_report(report, Path(report_file))
    sys.exit(0 if report.ok else 1)


@cli.group("batch")
def batch_group() -> None:
    """Batch imports held for review."""


@batch_group.command("purge")
@click.option("--idle-hours", type=click.IntRange(min=1),
              help="Idle time after which a batch is purged [default: EBIW_BATCH_HOLD_HOURS].")
def batch_purge(idle_hours: int | None) -> None:
    """Discard the held photos of every batch idle this long (run hourly; see deploy/).

    Prints one JSON line: {"purged": {batch id: photos discarded}}; each purged batch is in
    the audit trail. Confirmed photos stay stored.
    """
    services = _ready_services()
    hours = idle_hours or services.settings.batch_hold_hours
    batches = build_batches(services.db, services.settings, services.intake)
    purged = batches.purge_idle(timedelta(hours=hours))
    for batch_id, count in purged.items():
        _audit_admin("batch.purge", f"batch:{batch_id}",
                     detail={"discarded": count, "idle_hours": hours})
    _emit({"purged": purged})


@cli.command("read-wristband", with_appcontext=False)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def read_wristband_command(images: tuple[str, ...]) -> None:
    """Read the wristband barcode in each photo (rules from EBIW_WRISTBAND_RULES).

    One JSON line per image: file, symbology, payload, mrn, issuer, encounter; or file, error.
    """
    settings = Settings.from_env()
    failed = False
    for name in images:
        try:
            reading = read_wristband(Path(name).read_bytes(), settings.wristband_rule_set,
                                     settings.max_pixels)[0]
        except IntakeError as exc:
            failed = True
            _emit({"file": name, "error": exc.message})
            continue
        except OSError as exc:
            failed = True
            _emit({"file": name, "error": f"cannot read the file ({exc.strerror})"})
            continue
        wid = reading.identifier
        _emit({"file": name, "symbology": reading.symbology,
               "payload": reading.barcode.payload if reading.barcode else None,
               "mrn": wid.mrn, "issuer": wid.issuer, "encounter": wid.encounter})
    sys.exit(1 if failed else 0)


@cli.group("audit")
def audit_group() -> None:
    """The audit trail of PHI access."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Check the hash chain; print {"ok", "records", "broken_at"} and exit 1 when broken."""
    services = _ready_services()
    result = audit.verify(services.db)
    audit.append(services.db, _cli_actor(), "audit.verify", outcome=audit.SUCCESS,
                 detail={"ok": result.ok, "records": result.records},
                 node=services.settings.node)
    _emit(result.as_json())
    sys.exit(0 if result.ok else 1)


@audit_group.command("export")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False))
@click.option("--since", type=click.DateTime(), help="From this UTC time on.")
@click.option("--until", type=click.DateTime(), help="Before this UTC time.")
@click.option("--action", help="An action, or a family such as dicomweb.")
def audit_export(out_file: str, since: datetime | None, until: datetime | None,
                 action: str | None) -> None:
    """Write the trail as a FHIR R4 Bundle of AuditEvents (chain order) to --out."""
    services = _ready_services()
    filters = audit.Filters(action=action, since=since.replace(tzinfo=UTC) if since else None,
                            until=until.replace(tzinfo=UTC) if until else None)
    bundle = audit.fhir_bundle(services.db, filters, systems=services.settings.issuer_systems)
    write_durably(Path(out_file), json.dumps(bundle).encode())
    audit.append(services.db, _cli_actor(), "audit.read", outcome=audit.SUCCESS,
                 detail={"records": len(bundle["entry"])}, node=services.settings.node)
    _emit({"output": out_file, "records": len(bundle["entry"])})


@audit_group.command("forward")
def audit_forward() -> None:
    """Send what the syslog collector (EBIW_AUDIT_SYSLOG) has not received yet, in order."""
    services = _ready_services()
    forwarder = audit.syslog_forwarder(services.db, services.settings)
    if forwarder is None:
        raise click.ClickException("EBIW_AUDIT_SYSLOG is not set")
    try:
        result = forwarder.drain()
    finally:
        forwarder.stop()
    _emit({"sent": result.sent, "error": result.error})
    sys.exit(1 if result.error else 0)


@cli.command("export-deid")
@click.argument("studies", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--retain-dates", is_flag=True,
              help="Keep full dates (Full Dates option); default: shift them per patient.")
@click.option("--include-burned-in/--exclude-burned-in", default=False, show_default=True,
              help="Export images with burned-in annotation, flagged for review.")
def export_deid(studies: tuple[str, ...], out_dir: str, retain_dates: bool,
                include_burned_in: bool) -> None:
    """Export studies de-identified for research (DICOM PS3.15 Basic Profile) into --out.

    One JSON line per file written and per instance left out, then the report's summary
    (the full report is <out>/deid-report.json; it never holds the pseudonym mapping).
    """
    services = _ready_services()
    try:
        report = export_deidentified(services.db, services.archive, studies, Path(out_dir),
                                     retain_dates=retain_dates,
                                     include_burned_in=include_burned_in,
                                     actor=_cli_actor(), node=services.settings.node)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    for item in report.files:
        _emit({"output": str(Path(out_dir) / item["file"]), "flags": item["flags"]})
    for item in report.exclusions:
        _emit({"excluded": item})
    summary = report.as_json()
    _emit({"report": str(Path(out_dir) / "deid-report.json"), "patients": summary["patients"],
           **summary["instances"]})
    sys.exit(0 if report.files else 1)


def main() -> None:
    """Console-script entry point."""
    cli()
if __name__ == "__main__":
    main()
