"""The prior photo as a guide (issue 16): the latest earlier photo of a patient's body site,
rendered from the archive for the phone's camera overlay and review screen.

Which photo: among the capture sessions of the same patient (Patient ID and Issuer), body site
and laterality — the draft's own session excepted —, the clinical photo (label frames never)
taken last: its acquisition time from EXIF, else when it was stored. Its colour-normalized
instance is shown when there is one, so that successive visits look alike; else the original.
Who may see it is the caller's business (:meth:`app.workflow.tokens.Caller.sees`, as for the
viewer); a photo of a session marked sensitive is offered only for a capture that is marked
sensitive itself, so a restricted image never appears on a camera screen the user did not
mark as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from app.db.models import CaptureSession, Instance, Photo, as_utc
from app.db.session import Database
from app.gateways.archive import Archive
from app.pipeline.decode import DEFAULT_MAX_PIXELS
from app.pipeline.dicom import values
from app.pipeline.dicom.codes import body_site
from app.pipeline.render import render_frame, stored_frame
from app.workflow.intake import (
    LABEL_SERIES_NUMBER,
    patient_of,
    refusing_invalid_values,
    sensitive_flag,
    site_and_side,
    uuid_field,
)

PRIOR_BOX = (1280, 1280)
"""The rendered prior fits this box: sharp enough for a phone screen, small to send."""
PRIOR_QUALITY = 85


@dataclass(frozen=True)
class PriorRequest:
    """A validated request for the prior photo of a patient's body site (and side)."""

    patient_id: str
    issuer: str
    body_site: str
    laterality: str | None
    exclude_session: str | None
    sensitive: bool

    @classmethod
    def from_json(cls, body: Any, default_issuer: str) -> PriorRequest:
        """Validate ``{"patient": {"id", "issuer"}, "body_site", "laterality",
        "exclude_session", "sensitive"}``; raise :class:`InvalidRequest` naming the bad field
        (never echoing its value)."""
        patient = patient_of(body)
        site, laterality = site_and_side(body, required=True)
        assert site is not None  # required
        exclude = body.get("exclude_session")
        if exclude is not None:
            exclude = uuid_field(exclude, "exclude_session")
        sensitive = sensitive_flag(body)
        with refusing_invalid_values():
            return cls(
                patient_id=values.identifier(patient.get("id"), "patient.id", required=True),
                issuer=values.identifier(patient.get("issuer"), "patient.issuer")
                or default_issuer,
                body_site=site, laterality=laterality, exclude_session=exclude,
                sensitive=sensitive or body_site(site).sensitive)


@dataclass(frozen=True)
class PriorPhoto:
    """The photo chosen as the prior: the instance to show and what the answer tells."""

    study_uid: str
    instance: Instance
    normalized: bool
    taken_at: datetime
    photo_long_side: int
    pixel_spacing_mm: float | None  # mm per pixel of the photo, when it had a chart


@dataclass(frozen=True)
class PriorImage:
    """The prior rendered for the phone: a JPEG fitted in :data:`PRIOR_BOX`, its size, and its
    pixels per millimetre at that size when the photo had a chart."""

    photo: PriorPhoto
    jpeg: bytes
    width: int
    height: int
    px_per_mm: float | None


def _candidates(request: PriorRequest) -> Select[Photo, CaptureSession]:
    """The photos (not video clips: the guide is a still) of the request's patient, site and
    side, newest first."""
    same_side = CaptureSession.laterality.is_(None) if request.laterality is None \
        else CaptureSession.laterality == request.laterality
    query = (select(Photo, CaptureSession)
             .join(CaptureSession, Photo.session_id == CaptureSession.id)
             .join(Instance, Photo.sop_uid == Instance.sop_uid)
             .where(Instance.shown(),CaptureSession.patient_id == request.patient_id,
                    CaptureSession.issuer == request.issuer,
                    CaptureSession.body_site == request.body_site, same_side,
                    Photo.media_type.not_like("video/%"))
             .options(selectinload(Photo.instance))
             .order_by(func.coalesce(Photo.acquired_at, Photo.created_at).desc(),
                       Photo.created_at.desc()))
    if request.exclude_session is not None:
        query = query.where(CaptureSession.id != request.exclude_session)
    if not request.sensitive:
        query = query.where(CaptureSession.sensitive.is_(False))
    return query


def find_prior(database: Database, request: PriorRequest) -> PriorPhoto | None:
    """The latest earlier clinical photo for ``request`` (see the module), or None.

    Guarantees: never a rejected photo, never a label frame, never a photo of
    ``exclude_session``, never a sensitive session's photo unless the request is sensitive;
    the colour-normalized instance when the photo has one.
    """
    with database.session() as db:
        for photo, session in db.execute(_candidates(request)):
            if photo.instance.attributes.get("SeriesNumber") == LABEL_SERIES_NUMBER:
                continue
            shown = db.get(Instance, photo.normalized_sop_uid) \
                if photo.normalized_sop_uid else None
            return PriorPhoto(study_uid=session.study_uid, instance=shown or photo.instance,
                              normalized=shown is not None,
                              taken_at=as_utc(photo.acquired_at or photo.created_at),
                              photo_long_side=max(photo.width, photo.height),
                              pixel_spacing_mm=photo.pixel_spacing_mm)
    return None


def render_prior(archive: Archive, prior: PriorPhoto, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> PriorImage:
    """Render ``prior`` from the archive as an sRGB JPEG fitted in :data:`PRIOR_BOX`.

    Guarantees: ``px_per_mm`` is the pixels per millimetre at the chart plane at the rendered
    size (None without a chart), whichever instance was rendered (a reduced normalized
    instance shows the same field of view as the photo).
    """
    stored = stored_frame(archive.read(prior.instance))
    rendition = render_frame(stored.frame, box=PRIOR_BOX, media_type="image/jpeg",
                             quality=PRIOR_QUALITY, icc_profile=stored.icc_profile,
                             to_srgb=True, max_pixels=max_pixels)
    px_per_mm = None
    if prior.pixel_spacing_mm:
        scale = max(rendition.width, rendition.height) / prior.photo_long_side
        px_per_mm = scale / prior.pixel_spacing_mm
    return PriorImage(prior, rendition.data, rendition.width, rendition.height, px_per_mm)
