"""Retention: which studies are due for deletion under the rules, legal holds, and the purge.

**Rules** (``EBIW_RETENTION_RULES_FILE``, JSON or TOML): a ``default`` rule and ordered
``rules``, each matching a study by department and body site (SNOMED CT code); the first that
matches decides, else the default. A rule keeps a study ``years_after_last_study`` years after
the patient's last study with us (local date), and, with ``minor_age``, a patient younger than
that at their last study at least until their ``minor_age`` birthday plus
``minor_years_after_age`` years (the later date decides). A rule with a minor clause cannot
date a study whose birth date is unknown: such a study is reported as undetermined, never due.

**Legal holds** (``legal_hold`` rows) on a study or on every study of a patient: a held study is
listed in the report, never purged. Setting and releasing a hold are audited.

**Purge**, per due study, in this order so that a crash leaves no half state and a rerun
finishes: (1) one transaction rejects the study's shown instances through the one rejection
path (:func:`app.workflow.corrections.reject_rows`: a 113039 "Data Retention Policy Expired" KOS
stored durably, the instances marked, the note queued to every PACS destination, the EMR
notices re-queued: ``entered-in-error`` as nothing is left, and the PACS deliveries not sent
yet cancelled, as for any rejection: their files are about to go); (2) the files of the study's
instances, the rejection notes excepted, are deleted from the archive (already gone is fine),
and so are the session's clips still staged for a re-encode (waiting, or failed: their bytes
would otherwise outlive the study; their jobs cancelled); (3) one transaction marks the
instances and the study purged (``purged_at``) and audits ``retention.purge``. A study whose
instances a 113039 note rejected but whose files are not all purged is *interrupted* and
always finished first (unless held), whatever the rules say now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    CaptureSession,
    Instance,
    LegalHold,
    Photo,
    as_utc,
    utcnow,
)
from app.gateways.registry import read_config
from app.pipeline.dicom.codes import LATERALITY_SNOMED, body_sites
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID, RejectionReason
from app.settings import Settings, SettingsError
from app.workflow import audit
from app.workflow.corrections import (
    CorrectionError,
    PatientSummary,
    patient_summary,
    reject_rows,
)
from app.workflow.services import Services

RULES_VARIABLE = "EBIW_RETENTION_RULES_FILE"
RETENTION_CODE = RejectionReason.RETENTION.document_title.value  # 113039


class RetentionError(Exception):
    """The retention action cannot be done (no rules, an unknown study, not due, held,
    purged already...); nothing was changed. The message names UIDs at most, never PHI."""


# --- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One retention rule: which studies it takes (empty: any) and how long it keeps them."""

    name: str
    years_after_last_study: int
    minor_age: int | None = None
    minor_years_after_age: int = 0
    departments: frozenset[str] = frozenset()
    body_sites: frozenset[str] = frozenset()

    def matches(self, department: str | None, body_site: str | None) -> bool:
        """Whether a study of ``department`` and ``body_site`` falls under this rule."""
        return (not self.departments or department in self.departments) and \
            (not self.body_sites or body_site in self.body_sites)

    def keep_until(self, last_study: date, birth_date: date | None) -> date | None:
        """The first day the study may be purged: ``years_after_last_study`` after the last
        study, or for a minor at that study the later of that and their ``minor_age``
        birthday plus ``minor_years_after_age`` years. None when the rule has a minor clause
        and the birth date is unknown (the day cannot be told)."""
        after_last = _add_years(last_study, self.years_after_last_study)
        if self.minor_age is None:
            return after_last
        if birth_date is None:
            return None
        if _age(birth_date, last_study) >= self.minor_age:
            return after_last
        return max(after_last,
                   _add_years(birth_date, self.minor_age + self.minor_years_after_age))


@dataclass(frozen=True)
class Rules:
    """The ordered rules and the default: the first rule that matches a study decides."""

    default: Rule
    rules: tuple[Rule, ...] = ()

    def rule_for(self, department: str | None, body_site: str | None) -> Rule:
        """The rule that decides for a study of ``department`` and ``body_site``."""
        return next((r for r in self.rules if r.matches(department, body_site)), self.default)


def load_rules(settings: Settings) -> Rules:
    """The rules of ``EBIW_RETENTION_RULES_FILE``; :class:`RetentionError` when it is not set
    or not valid (the message says what is wrong)."""
    if settings.retention_rules_file is None:
        raise RetentionError(f"no retention rules: set {RULES_VARIABLE}")
    try:
        return rules_from_config(read_config(settings.retention_rules_file, RULES_VARIABLE))
    except SettingsError as exc:
        raise RetentionError(str(exc)) from exc


def rules_from_config(config: Mapping[str, Any]) -> Rules:
    """Parse ``{"default": {...}, "rules": [{...}, ...]}``; :class:`SettingsError` naming the
    rule and the field for anything missing, unknown or of the wrong type."""
    if not isinstance(config.get("default"), dict):
        raise SettingsError(f"{RULES_VARIABLE}: a [default] rule is required")
    listed = config.get("rules", [])
    if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
        raise SettingsError(f"{RULES_VARIABLE}: rules must be a list of tables")
    unknown = set(config) - {"default", "rules"}
    if unknown:
        raise SettingsError(f"{RULES_VARIABLE}: unknown key {sorted(unknown)[0]}")
    default = _rule(dict(config["default"]), "default", matching=False)
    rules = tuple(_rule(dict(r), f"rules[{n}]", matching=True) for n, r in enumerate(listed))
    if len({r.name for r in rules} | {"default"}) != len(rules) + 1:
        raise SettingsError(f"{RULES_VARIABLE}: rule names must be unique (and not default)")
    return Rules(default=default, rules=rules)


_FIELDS = {"name", "department", "body_site", "years_after_last_study", "minor_age",
           "minor_years_after_age"}


def _rule(raw: dict[str, Any], where: str, *, matching: bool) -> Rule:
    where = f"{RULES_VARIABLE}: {where}"
    unknown = set(raw) - (_FIELDS if matching else _FIELDS - {"name", "department",
                                                               "body_site"})
    if unknown:
        raise SettingsError(f"{where}: unknown or misplaced key {sorted(unknown)[0]}")
    name = raw.get("name") if matching else "default"
    if not isinstance(name, str) or not name:
        raise SettingsError(f"{where}: name is required")

    def years(key: str, required: bool) -> int | None:
        value = raw.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 200:
            raise SettingsError(f"{where}: {key} must be a whole number of years (0-200)")
        return value

    def names(key: str) -> frozenset[str]:
        value = raw.get(key, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"{where}: {key} must be a string or a list of strings")
        return frozenset(value)

    kept = years("years_after_last_study", True)
    assert kept is not None  # required
    return Rule(name=name, years_after_last_study=kept, minor_age=years("minor_age", False),
                minor_years_after_age=years("minor_years_after_age", False) or 0,
                departments=names("department"), body_sites=names("body_site"))


def _add_years(day: date, years: int) -> date:
    """``day`` ``years`` later; 29 February becomes 1 March in a common year (never early)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return date(day.year + years, 3, 1)


def _age(birth: date, on: date) -> int:
    """Age in completed years on ``on``."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """What the rules say of one study: its rule, the first day it may be purged (None:
    undetermined), its hold (``study``, ``patient`` or None), its unpurged files, and whether
    a purge of it was interrupted."""

    study_uid: str
    rule: str
    due_date: date | None
    hold: str | None
    files: int
    interrupted: bool

    def as_json(self) -> dict[str, Any]:
        """The report's entry: UIDs, rule, dates and counts only (no PHI)."""
        return {"study_instance_uid": self.study_uid, "rule": self.rule,
                "due_date": self.due_date.isoformat() if self.due_date else None,
                "files": self.files, "interrupted": self.interrupted,
                **({"hold": self.hold} if self.hold else {})}


@dataclass(frozen=True)
class Report:
    """The dry run: studies due (to purge), due but held, and undetermined."""

    as_of: date
    due: list[Assessment] = field(default_factory=list)
    held: list[Assessment] = field(default_factory=list)
    undetermined: list[Assessment] = field(default_factory=list)
    studies: int = 0

    def as_json(self) -> dict[str, Any]:
        """``{"as_of", "studies", "due": [...], "held": [...], "undetermined": [...]}``."""
        return {"as_of": self.as_of.isoformat(), "studies": self.studies,
                "due": [a.as_json() for a in self.due],
                "held": [a.as_json() for a in self.held],
                "undetermined": [a.as_json() for a in self.undetermined]}


def report(services: Services, today: date | None = None) -> Report:
    """The dry run under the configured rules on ``today`` (UTC date by default); changes
    nothing. Raises :class:`RetentionError` when the rules are missing or invalid."""
    rules = load_rules(services.settings)
    with services.db.session() as db:
        return assess(db, rules, today or datetime.now(UTC).date())


def assess(db: Session, rules: Rules, today: date) -> Report:
    """Every study with files left to purge, judged by ``rules`` on ``today``: due (the day
    has come, not held; interrupted purges first), held, or undetermined. Reads only."""
    files: dict[str, int] = {uid: count for uid, count in db.execute(
        select(Instance.study_uid, func.count()).where(
            Instance.purged_at.is_(None), Instance.sop_class_uid != KOS_SOP_CLASS_UID)
        .group_by(Instance.study_uid))}
    interrupted = set(db.scalars(select(Instance.study_uid).where(
        Instance.rejection_code == RETENTION_CODE, Instance.purged_at.is_(None),
        Instance.sop_class_uid != KOS_SOP_CLASS_UID).distinct()))
    sessions = db.scalars(select(CaptureSession).order_by(CaptureSession.created_at)).all()
    last: dict[tuple[str, str], date] = {}
    for s in sessions:
        key = (s.issuer, s.patient_id)
        last[key] = max(last.get(key, date.min), _local_date(s))
    held_studies = set(db.scalars(select(LegalHold.study_uid)
                                  .where(LegalHold.study_uid.is_not(None))))
    held_patients = {(issuer, mrn) for issuer, mrn in db.execute(
        select(LegalHold.issuer, LegalHold.patient_id).where(LegalHold.patient_id.is_not(None)))}
    due: list[Assessment] = []
    held: list[Assessment] = []
    undetermined: list[Assessment] = []
    count = 0
    for s in sessions:
        if s.purged_at is not None or not files.get(s.study_uid):
            continue
        count += 1
        rule = rules.rule_for(s.department, s.body_site)
        day = rule.keep_until(last[(s.issuer, s.patient_id)], s.birth_date)
        hold = "study" if s.study_uid in held_studies else \
            "patient" if (s.issuer, s.patient_id) in held_patients else None
        stopped = s.study_uid in interrupted
        entry = Assessment(s.study_uid, rule.name, day, hold, files[s.study_uid], stopped)
        if day is None and not stopped:
            undetermined.append(entry)
        elif stopped or (day is not None and day <= today):
            (held if hold else due).append(entry)
    due.sort(key=lambda a: (not a.interrupted, a.due_date or date.min, a.study_uid))
    return Report(as_of=today, due=due, held=held, undetermined=undetermined, studies=count)


@dataclass(frozen=True)
class StudyFacts:
    """A study as an admin recognises it before its files go for good: its patient, its date
    where it was taken, its department and body site (None: not recorded) and its photos.
    It names a patient: for the admin page only, never the report's JSON or a log."""

    patient: PatientSummary
    taken: date
    department: str | None
    body_site: str | None
    """The site's meaning (the code when it is not in our table), with its side if any."""
    photos: int
    """The photos captured in the study (originals; the files also hold derived images)."""


def study_facts(services: Services, study_uids: Iterable[str]) -> dict[str, StudyFacts]:
    """The facts of each of ``study_uids`` that is a study of ours, by UID; reads only."""
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        return {}
    with services.db.session() as db:
        return _facts(db, uids)


def _facts(db: Session, study_uids: Sequence[str]) -> dict[str, StudyFacts]:
    """:func:`study_facts` in ``db``."""
    sessions = db.scalars(select(CaptureSession)
                          .where(CaptureSession.study_uid.in_(study_uids))).all()
    photos: dict[str, int] = {session_id: count for session_id, count in db.execute(
        select(Photo.session_id, func.count()).where(
            Photo.session_id.in_([s.id for s in sessions])).group_by(Photo.session_id))}
    return {s.study_uid: StudyFacts(patient_summary(s), _local_date(s), s.department,
                                    _site_name(s), photos.get(s.id, 0)) for s in sessions}


def _site_name(session: CaptureSession) -> str | None:
    """The body site as a person reads it, with its side: ``Heel, left``."""
    if not session.body_site:
        return None
    site = body_sites().get(session.body_site)
    name = site.meaning if site else session.body_site
    side = LATERALITY_SNOMED.get(session.laterality or "")
    return f"{name}, {side[1].lower()}" if side else name


def _local_date(session: CaptureSession) -> date:
    """The study's date where it was captured."""
    return (as_utc(session.created_at) + timedelta(minutes=session.utc_offset_minutes)).date()


# --- the purge --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    """One purged study: its rejection note (None when nothing was left shown to reject) and
    the files deleted."""

    study_uid: str
    rule: str
    due_date: date | None
    kos_sop_uid: str | None
    rejected: tuple[str, ...]
    deleted: int

    def as_json(self) -> dict[str, Any]:
        """The purge's entry: UIDs and counts only."""
        return {"study_instance_uid": self.study_uid, "rule": self.rule,
                "due_date": self.due_date.isoformat() if self.due_date else None,
                "kos_sop_instance_uid": self.kos_sop_uid, "rejected": list(self.rejected),
                "deleted_files": self.deleted}


def purge(services: Services, *, actor: str, studies: Sequence[str] | None = None,
          today: date | None = None) -> list[Purged]:
    """Purge what :func:`report` lists as due now: every due study, or only ``studies``.

    Guarantees: a study held, not due, unknown or purged already is never touched; naming
    one in ``studies`` raises :class:`RetentionError` before anything changes. Each study
    goes through the three steps of the module's docstring; on return each listed one is
    purged (files deleted, rows marked, audited with ``actor``). A failure (the archive
    cannot be read or deleted from) raises after the studies before it were purged; the
    failed one is left rejected or untouched, and a rerun finishes it.
    """
    rules = load_rules(services.settings)
    with services.db.session() as db:
        found = assess(db, rules, today or datetime.now(UTC).date())
        if studies is not None:
            due = {a.study_uid: a for a in found.due}
            for uid in studies:
                if uid not in due:
                    raise RetentionError(_why_not(db, found, uid))
            chosen = [due[uid] for uid in dict.fromkeys(studies)]
        else:
            chosen = found.due
    return [_purge_one(services, entry, actor) for entry in chosen]


def _why_not(db: Session, found: Report, study_uid: str) -> str:
    """Why ``study_uid`` is not due, without PHI."""
    session = _study_session(db, study_uid)
    if session is None:
        return f"no study of ours has Study Instance UID {study_uid}"
    if session.purged_at is not None:
        return f"study {study_uid} was purged already"
    if any(a.study_uid == study_uid for a in found.held):
        return f"study {study_uid} is on legal hold"
    if any(a.study_uid == study_uid for a in found.undetermined):
        return f"study {study_uid} cannot be dated (birth date unknown); it is not due"
    return f"study {study_uid} is not due for purging"


def _purge_one(services: Services, entry: Assessment, actor: str) -> Purged:
    """The three steps for one due study (see the module docstring)."""
    detail: dict[str, object] = {"rule": entry.rule, "due_date": entry.due_date.isoformat()
                                 if entry.due_date else None}
    with services.db.session() as db:
        session = db.scalar(select(CaptureSession).where(
            CaptureSession.study_uid == entry.study_uid))
        assert session is not None  # assessed just now; sessions are never deleted
        shown = db.scalars(select(Instance).where(
            Instance.study_uid == entry.study_uid, Instance.shown(),
            Instance.sop_class_uid != KOS_SOP_CLASS_UID)
            .order_by(Instance.stored_at, Instance.sop_uid)).all()
        rejection = None
        if shown:
            try:
                rejection = reject_rows(services, db, session, shown, RejectionReason.RETENTION,
                                    actor=actor, detail=detail)
            except CorrectionError as exc:
                raise RetentionError(str(exc)) from exc
    with services.db.session() as db:
        session = db.scalar(select(CaptureSession).where(
            CaptureSession.study_uid == entry.study_uid).with_for_update(of=CaptureSession))
        assert session is not None
        if session.purged_at is not None:  # another purge finished it meanwhile
            raise RetentionError(f"study {entry.study_uid} was purged already")
        doomed = _unpurged(db, entry.study_uid)
        discarded = services.intake.discard_staged_clips(db, session.id)
        for row in doomed:
            try:
                services.archive.delete(row)
            except OSError as exc:
                raise RetentionError(f"the archive could not delete the files of study "
                                     f"{entry.study_uid} ({type(exc).__name__}); rerun the "
                                     "purge to finish it") from exc
        now = utcnow()
        uids = [r.sop_uid for r in doomed]
        db.execute(update(Instance).where(Instance.sop_uid.in_(uids)).values(purged_at=now)
                   .execution_options(synchronize_session=False))
        session.purged_at = now
        kos = rejection.kos_sop_uid if rejection else None
        audit.record(db, actor, "retention.purge",
                     audit.patient_ref(session.patient_id, session.issuer),
                     audit.study_ref(entry.study_uid), *(audit.instance_ref(u) for u in uids),
                     outcome=audit.SUCCESS, node=services.settings.node,
                     detail={**detail, "kos": kos, "deleted": uids,
                             "discarded_clips": discarded})
    return Purged(entry.study_uid, entry.rule, entry.due_date, kos,
                  rejection.rejected if rejection else (), len(uids))


def _unpurged(db: Session, study_uid: str) -> Sequence[Instance]:
    """The study's instances whose files are still archived, the rejection notes excepted."""
    return db.scalars(select(Instance).where(
        Instance.study_uid == study_uid, Instance.purged_at.is_(None),
        Instance.sop_class_uid != KOS_SOP_CLASS_UID).order_by(Instance.sop_uid)).all()


# --- legal holds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldTarget:
    """A study (``study_uid``) or a patient (``issuer``, ``patient_id``) to hold."""

    study_uid: str | None = None
    issuer: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if bool(self.study_uid) == bool(self.patient_id and self.issuer):
            raise RetentionError("name either a study, or a patient ID with its issuer")

    @property
    def scope(self) -> str:
        """``study`` or ``patient``."""
        return "study" if self.study_uid else "patient"


def set_hold(services: Services, target: HoldTarget, reason: str, *, actor: str) -> None:
    """Put ``target`` on legal hold, audited. :class:`RetentionError`, changing nothing, for
    an empty reason, a study or patient without any study of ours, or one held already."""
    if not reason.strip():
        raise RetentionError("give the reason of the legal hold")
    with services.db.session() as db:
        session = _held_session(db, target)
        if _hold(db, target) is not None:
            raise RetentionError(f"this {target.scope} is on legal hold already")
        db.add(LegalHold(study_uid=target.study_uid, issuer=target.issuer if target.patient_id
                         else None, patient_id=target.patient_id, reason=reason.strip()[:256],
                         set_by=actor))
        _audit_hold(services, db, "retention.hold", actor, target, session,
                    {"reason": reason.strip()})


def release_hold(services: Services, target: HoldTarget, *, actor: str) -> None:
    """Release the legal hold of ``target``, found by its own key (the study's UID, or the
    patient's ID and issuer), audited, whether or not a study of ours is still of that
    patient: every hold listed can be released. :class:`RetentionError`, changing nothing,
    when it is not held."""
    with services.db.session() as db:
        row = _hold(db, target)
        if row is None:
            raise RetentionError(f"this {target.scope} is not on legal hold")
        db.delete(row)
        _audit_hold(services, db, "retention.release", actor, target,
                    _study_session(db, target.study_uid) if target.study_uid else None,
                    {"held_since": row.set_at.isoformat(), "held_by": row.set_by})


@dataclass(frozen=True)
class ReleasePlan:
    """What releasing a hold gives back to the purge, for an admin to confirm it: the hold's
    reason, who set it and when; its patient (the held study's, or the held patient as their
    latest study here names them: only the ID and issuer when none is left); the held study's
    facts (None for a patient hold); and how many studies of ours with files left (those a
    purge could delete) it covers."""

    target: HoldTarget
    reason: str
    set_by: str
    set_at: datetime
    patient: PatientSummary
    study: StudyFacts | None
    studies: int


def plan_release(services: Services, target: HoldTarget) -> ReleasePlan:
    """What :func:`release_hold` of ``target`` would release now; raises what it would raise
    (:class:`RetentionError` when ``target`` is not held). Reads only."""
    with services.db.session() as db:
        row = _hold(db, target)
        if row is None:
            raise RetentionError(f"this {target.scope} is not on legal hold")
        sessions = _covered(db, target)
        patient = patient_summary(sessions[0]) if sessions else \
            PatientSummary("", target.patient_id or "", target.issuer or "", None)
        study = _facts(db, [target.study_uid]).get(target.study_uid) if target.study_uid \
            else None
        with_files = db.scalar(select(func.count(Instance.study_uid.distinct())).where(
            Instance.study_uid.in_([s.study_uid for s in sessions]),
            Instance.purged_at.is_(None), Instance.sop_class_uid != KOS_SOP_CLASS_UID))
        return ReleasePlan(target, row.reason, row.set_by, as_utc(row.set_at), patient, study,
                           with_files or 0)


def holds(services: Services) -> list[LegalHold]:
    """Every legal hold, oldest first (detached rows)."""
    with services.db.session() as db:
        rows = db.scalars(select(LegalHold).order_by(LegalHold.set_at, LegalHold.id)).all()
        db.expunge_all()
        return list(rows)


def held_patients(services: Services, holds: Iterable[LegalHold]) -> dict[int, PatientSummary]:
    """The patient of each patient hold of ``holds`` that has a study of ours, by the hold's
    id, as their latest study here names them (as :func:`plan_release` does); a hold on a
    patient without any study here, like a study hold, is not in it. Reads only; names
    patients: for the admin page only, never a log."""
    named: dict[int, PatientSummary] = {}
    with services.db.session() as db:
        for h in holds:
            if h.patient_id and h.issuer:
                target = HoldTarget(issuer=h.issuer, patient_id=h.patient_id)
                latest = next(iter(_covered(db, target)), None)
                if latest is not None:
                    named[h.id] = patient_summary(latest)
    return named


def _held_session(db: Session, target: HoldTarget) -> CaptureSession:
    """A study of ``target`` (the study itself, or the patient's latest);
    :class:`RetentionError` when it has none."""
    session = next(iter(_covered(db, target)), None)
    if session is None:
        raise RetentionError(
            f"no study of ours has Study Instance UID {target.study_uid}" if target.study_uid
            else "no study of ours is of a patient with this ID and issuer")
    return session


def _covered(db: Session, target: HoldTarget) -> Sequence[CaptureSession]:
    """The studies of ours a hold on ``target`` covers (the study, or every study of the
    patient), latest first."""
    if target.study_uid:
        where = CaptureSession.study_uid == target.study_uid
    else:
        where = (CaptureSession.issuer == target.issuer) & \
            (CaptureSession.patient_id == target.patient_id)
    return db.scalars(select(CaptureSession).where(where)
                      .order_by(CaptureSession.created_at.desc())).all()


def _hold(db: Session, target: HoldTarget) -> LegalHold | None:
    if target.study_uid:
        return db.scalar(select(LegalHold).where(LegalHold.study_uid == target.study_uid))
    return db.scalar(select(LegalHold).where(LegalHold.issuer == target.issuer,
                                             LegalHold.patient_id == target.patient_id))


def _study_session(db: Session, study_uid: str) -> CaptureSession | None:
    """Our study ``study_uid``, or None."""
    return db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study_uid))


def _audit_hold(services: Services, db: Session, action: str, actor: str, target: HoldTarget,
                session: CaptureSession | None, detail: dict[str, object]) -> None:
    """Audit ``action`` on the hold of ``target``, naming the patient (the held patient, or
    ``session``'s when we have it) and the held study."""
    patient = (target.patient_id, target.issuer) if target.patient_id and target.issuer \
        else (session.patient_id, session.issuer) if session else None
    entities: Iterable[str] = (*((audit.patient_ref(*patient),) if patient else ()),
                               *((audit.study_ref(target.study_uid),) if target.study_uid
                                 else ()))
    audit.record(db, actor, action, *entities, outcome=audit.SUCCESS,
                 node=services.settings.node, detail={"scope": target.scope, **detail})
