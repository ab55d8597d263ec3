"""The one place that builds the services from the settings: the database, the archive of
record, the delivery registry and the intake. The web app (``create_app``) and every command
(``ebiw``) get theirs here, so both run the same wiring."""

from __future__ import annotations

from dataclasses import dataclass

from app.db.session import Database
from app.durable import sweep_temp_files
from app.gateways.archive import Archive, build_archive
from app.gateways.patients import build_directories
from app.gateways.registry import Registry, build_registry
from app.settings import Settings
from app.workflow.delivery import REENCODE_QUEUE, Job
from app.workflow.dicom_intake import DicomIntake
from app.workflow.intake import Intake


@dataclass(frozen=True)
class Services:
    """What the blueprints and commands use, built once per process by :func:`build_services`."""

    settings: Settings
    db: Database
    archive: Archive
    registry: Registry
    intake: Intake
    dicom_intake: DicomIntake

    def worker_jobs(self) -> dict[str, Job]:
        """The jobs ``ebiw worker`` does beside delivering, by outbox queue: re-encoding the
        clips staged by uploads (:meth:`Intake.reencode_job`), leased for
        :meth:`Intake.reencode_lease_seconds` (at least the deliveries' lease)."""
        return {REENCODE_QUEUE: Job(self.intake.reencode_job, max(
            self.registry.lease_seconds, self.intake.reencode_lease_seconds()))}


def build_services(settings: Settings) -> Services:
    """Wire everything ``settings`` names; connects to nothing yet (no schema change either)."""
    db = Database(settings.database)
    archive = build_archive(settings)
    registry = build_registry(settings)
    directories = build_directories(settings, db)
    intake = Intake(db, archive, settings, registry, directories)
    return Services(settings=settings, db=db, archive=archive, registry=registry, intake=intake,
                    dicom_intake=DicomIntake(db, archive, settings, directories, intake.outbox))


def sweep_interrupted_writes(settings: Settings) -> int:
    """Remove what writes killed mid-way left in the data dir and the local archive (see
    :func:`app.durable.sweep_temp_files`); how many files. Run once when a server or a worker
    starts, never per request: it walks the whole archive."""
    roots = {settings.data_dir.resolve()}
    if not settings.archive_s3_bucket:
        roots.add(settings.archive_root.resolve())
    nested = {r for r in roots if any(o != r and o in r.parents for o in roots)}
    return sum(sweep_temp_files(root) for root in sorted(roots - nested))
