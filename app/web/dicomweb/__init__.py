"""DICOMweb for the local archive (PS3.18): QIDO-RS search and WADO-RS retrieve at /dicomweb,
and STOW-RS for objects from other devices (``store_instances``: role ``capture``; the intake
is :mod:`app.workflow.dicom_intake`, the answer :mod:`.stow`).

Search answers DICOM JSON from the attribute index (``index.py``, ``query.py``). Retrieve
sends instances as stored, in ``multipart/related; type="application/dicom"``; metadata as
DICOM JSON with bulk data URIs; frames and bulk data as the stored JPEG; rendered images and
thumbnails fitted to a ``viewport`` (``app.pipeline.render``: images other devices stored in
another Transfer Syntax are decoded to be rendered), the default thumbnail of each instance
cached on disk under the data directory. An SR or a KOS has no rendering (406
``not_an_image``); an instance whose stored pixels are damaged answers 409
``damaged_instance`` (see :func:`_damaged`). A rendered study or series is one image (its
first instance) or, asked for ``multipart/related``, every instance rendered.

Every search and retrieval needs the ``view`` or ``capture`` role; every request is audited
by ``app.web.audit`` (who, what — the study, its instances and its patient —, when, where,
outcome), refusals included.
A session launched from the EMR for one patient (``Caller.patient``) sees only that patient:
searches match only its instances, other studies answer 403.
Answers carry ``Cache-Control: no-store``, except thumbnails, which the browser may keep
privately for a few minutes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import pydicom
from flask import Blueprint, Response, abort, g, request, url_for
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.db.models import Instance
from app.durable import temp_file
from app.pipeline.decode import UnreadablePhotoError
from app.pipeline.dicom.read import UnreadableDicomError
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.render import (
    RENDERED_MEDIA_TYPES,
    THUMBNAIL_BOX,
    DecodedFrame,
    Rendition,
    StoredFrame,
    UnrenderableError,
    image_frame,
    poster_frame,
    render_frame,
    render_thumbnail,
    stored_clip,
    stored_frame,
)
from app.web import services
from app.web.auth import require
from app.web.dicomweb import index, media, query, stow
from app.web.errors import error_response
from app.web.launch import ONE_PATIENT, OTHER_PATIENT
from app.web.limits import rate_limited
from app.workflow import audit
from app.workflow.dicom_intake import Received, Status
from app.workflow.tokens import Caller

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
log = logging.getLogger(__name__)

ROLES = ("view", "capture")
THUMBNAIL_CACHE_CONTROL = "private, max-age=600"
MAX_VIEWPORT = 8192
VIDEO_MP4 = "video/mp4"
ICC_CHOICES = ("yes", "no", "srgb")

INSTANCE = "/studies/<study>/series/<series>/instances/<sop>"
LEVELS = {"study": "/studies/<study>", "series": "/studies/<study>/series/<series>",
          "instance": INSTANCE}
"""The WADO-RS resource levels and their paths (see :func:`_at_every_level`)."""
LevelView = Callable[..., Response]
"""A view of every level: ``(study, series=None, sop=None)``."""


class _Refused(Exception):
    """A request refused with a status and a message that names no PHI."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@bp.errorhandler(_Refused)
def _refused(exc: _Refused) -> tuple[Response, int]:
    return error_response(exc.status, exc.code, exc.message)


DAMAGED = (UnreadableDicomError, UnreadablePhotoError)
"""What reading a stored instance's pixels raises when they are damaged (a truncated or
corrupt JPEG, Pixel Data cut off, an unreadable clip): the messages name no value."""


def _log_damaged(exc: Exception) -> None:
    """One ERROR line, without PHI or traceback (the audit record of the request names the
    instance), for an administrator to find and replace or reject the instance."""
    log.error("stored instance damaged, not rendered: %s (%s)", type(exc).__name__, exc)


@bp.errorhandler(UnreadableDicomError)
@bp.errorhandler(UnreadablePhotoError)
def _damaged(exc: Exception) -> tuple[Response, int]:
    """409: the request is fine, the stored object is not. Not a 4xx blaming the request
    (400, 406), nor 404 (the instance exists and its DICOM can be retrieved), nor 503 (a retry
    cannot help), nor a bare 500 (nothing unexpected happened: the damage was found and is
    named): the current state of the target resource prevents the answer, which an
    administrator can resolve (reject or replace the instance), RFC 9110 15.5.10."""
    _log_damaged(exc)
    return error_response(409, "damaged_instance", "the stored pixel data of this instance is "
                          "damaged and cannot be rendered; the instance itself can still be "
                          "retrieved, and an administrator can reject or replace it")


def _until_damaged(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A streamed multipart body, ended without its closing boundary (the client sees an
    incomplete answer: its status was sent before the part was read) at the first instance
    whose pixels are damaged, which is logged once, without traceback."""
    try:
        yield from chunks
    except DAMAGED as exc:
        _log_damaged(exc)


@bp.errorhandler(query.QueryError)
def _bad_query(exc: query.QueryError) -> tuple[Response, int]:
    return error_response(400, "invalid_query", str(exc))


def _not_an_image() -> _Refused:
    return _Refused(406, "not_an_image", "this instance is not an image (a structured report "
                                         "or key object selection): it has no rendering")


def _not_acceptable(what: str) -> _Refused:
    return _Refused(406, "not_acceptable", f"{what} is available only as described in the "
                                           "conformance notes (README, Viewer and DICOMweb)")


# --- caching, for every answer of this blueprint (the audit hook is app.web.audit's) ---------


@bp.after_request
def _cache(response: Response) -> Response:
    """Nothing is cached unless the view said otherwise (thumbnails, privately)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _patient_of(header: dict[str, Any]) -> tuple[str, str]:
    """(Patient ID, Issuer of Patient ID) of a DICOM JSON header, "" for what it lacks."""
    return (header.get("00100020", {}).get("Value", [""])[0],
            header.get("00100021", {}).get("Value", [""])[0])


def _patients(headers: list[dict[str, Any]]) -> list[str]:
    """Audit references of the patients in DICOM JSON headers, in order, once each."""
    refs: dict[str, None] = {}
    for header in headers:
        patient_id, issuer = _patient_of(header)
        if patient_id:
            refs.setdefault(audit.patient_ref(patient_id, issuer), None)
    return list(refs)


# --- helpers ----------------------------------------------------------------------------------


def _base() -> str:
    """Absolute URL of the DICOMweb root under the configured public URL (never from the
    request's Host header, which a client may spoof or, like dicomweb-client, send without
    its port)."""
    path = url_for("dicomweb.search_studies").rsplit("/studies", 1)[0]
    return services().settings.public_url.rstrip("/") + path


def _instance_url(row: Instance) -> str:
    return f"{_base()}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"


def _rows(study: str, series: str | None = None, sop: str | None = None) -> list[Instance]:
    """The indexed instances of a study, series or instance (404 when there are none)."""
    scope: list[ColumnElement[bool]] = [Instance.study_uid == study, Instance.shown()]
    if series is not None:
        scope.append(Instance.series_uid == series)
    if sop is not None:
        scope.append(Instance.sop_uid == sop)
    svc = services()
    with svc.db.session() as db:
        index.refresh(db, svc.archive, *scope)
        rows = [r for r in db.scalars(select(Instance).where(*scope)) if index.is_current(r)]
    if not rows:
        abort(404)
    rows.sort(key=query.instance_order)
    g.audit_entities = [f"study:{study}", *(f"instance:{r.sop_uid}" for r in rows),
                        *_patients([r.attributes[index.DICOM] for r in rows])]
    if not all(g.caller.sees(*_patient_of(r.attributes[index.DICOM])) for r in rows):
        raise _Refused(403, "other_patient", OTHER_PATIENT)
    return rows


def _patient_scope() -> tuple[ColumnElement[bool], ...]:
    """Search filters that keep a session launched for one patient to that patient."""
    patient = g.caller.patient
    return () if patient is None else query.patient_filter(patient[1], patient[0])


def study_visible(study: str, caller: Caller) -> bool:
    """Whether ``caller`` may see every archived instance of ``study`` (True when there is
    none: its data requests answer 404)."""
    if caller.patient is None:
        return True
    svc = services()
    with svc.db.session() as db:
        index.refresh(db, svc.archive, Instance.study_uid == study)
        headers = [r.attributes[index.DICOM] for r in
                   db.scalars(select(Instance).where(Instance.study_uid == study,
                                                     Instance.shown()))
                   if index.is_current(r)]
    return all(caller.sees(*_patient_of(h)) for h in headers)


def _still(row: Instance, data: bytes, max_pixels: int) -> StoredFrame | DecodedFrame:
    """What renderings of ``row`` start from: a photo's stored frame (decoded when it is not
    stored as JPEG Baseline), a clip's first picture."""
    if row.sop_class_uid == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE:
        return poster_frame(data)
    try:
        return image_frame(data, max_pixels)
    except UnrenderableError as exc:
        raise _Refused(406, "not_renderable", f"this image cannot be rendered here: {exc}; "
                       "retrieve the instance itself") from exc


def _is_image(row: Instance) -> bool:
    """Whether ``row`` has pixels to render (a photo or a clip; not an SR or a KOS)."""
    return index.PIXEL_DATA in row.attributes.get(index.DICOM, {})


def _first_image(rows: list[Instance]) -> Instance:
    """The instance a study's or series' single rendering and thumbnail show: its first image
    (its first instance when it has none, which then answers 406)."""
    return next((r for r in rows if _is_image(r)), rows[0])


def _transfer_syntax(row: Instance) -> str:
    return row.attributes[index.TRANSFER_SYNTAX]


def _ranges() -> list[media.MediaRange]:
    return media.accepted(request.headers.get("Accept"))


# --- QIDO-RS ----------------------------------------------------------------------------------


def _search(run: Callable[[Session, query.Query, str], query.Results],
            *scope: ColumnElement[bool]) -> Response:
    if not media.accepts_json(_ranges()):
        raise _not_acceptable("search results")
    parsed = query.parse(request.args, Instance.shown(), *scope, *_patient_scope())
    svc = services()
    with svc.db.session() as db:
        index.refresh(db, svc.archive)
        results = run(db, parsed, _base())
    endpoint = request.endpoint or ""  # always set in a view; None only outside a request
    g.audit_entities = [f"query:{endpoint.rsplit('.', 1)[-1]}",
                        *(f"study:{uid}" for uid in query.study_uids(results)),
                        *_patients(results.datasets)]
    if not results.datasets:
        return Response(status=204)
    response = Response(json.dumps(results.datasets), content_type=media.DICOM_JSON)
    if results.truncated:
        response.headers["Warning"] = (f'299 {request.host}: "There are additional results '
                                       'that can be requested"')
    return response


@bp.get("/studies")
@require(*ROLES)
def search_studies() -> Response:
    return _search(query.search_studies)


@bp.post("/studies")
@bp.post("/studies/<study>")
@require("capture")
@rate_limited("upload")
def store_instances(study: str | None = None) -> Response:
    """STOW-RS: ``multipart/related; type="application/dicom"``, one Part 10 object per part,
    each reconciled, stored and queued by :class:`app.workflow.dicom_intake.DicomIntake`
    (answer: :mod:`.stow`). The body is bounded by ``EBIW_MAX_UPLOAD_BYTES`` (413)."""
    if g.caller.patient is not None:
        raise _Refused(403, "one_patient", ONE_PATIENT)
    if request.mimetype != "multipart/related" or \
            request.mimetype_params.get("type", media.DICOM).lower() != media.DICOM:
        raise _Refused(415, "unsupported_media_type", 'send multipart/related; '
                       'type="application/dicom" (one DICOM Part 10 object per part)')
    marker = request.mimetype_params.get("boundary", "")
    if not marker:
        raise _Refused(400, "invalid_multipart", "the Content-Type has no boundary")
    try:
        parts = media.split_multipart(request.get_data(cache=False), marker)
    except media.MultipartError as exc:
        raise _Refused(400, "invalid_multipart", str(exc)) from exc
    if not parts:
        raise _Refused(400, "invalid_multipart", "the body holds no part")
    intake = services().dicom_intake
    results = [intake.receive(data, sender=g.caller.user, study_uid=study)
               if headers.get("content-type", media.DICOM).split(";")[0].strip().lower()
               == media.DICOM else
               Received(Status.CANNOT_UNDERSTAND, "a part is not application/dicom")
               for headers, data in parts]
    answer = stow.status_of(results)
    response = Response(json.dumps(stow.response_dataset(results, _base(), study)),
                        status=answer, content_type=media.DICOM_JSON)
    for warning in stow.warnings(results, urlsplit(services().settings.public_url).netloc):
        response.headers.add("Warning", warning)
    if answer == 503:
        response.headers["Retry-After"] = str(stow.RETRY_AFTER_S)
    g.audit_entities = [audit.study_ref(uid) for uid in
                        dict.fromkeys(r.study_uid for r in results if r.stored)]
    g.audit_detail = {"stored": sum(r.stored for r in results),
                      "failed": sum(not r.stored for r in results)}
    return response


@bp.get("/series")
@require(*ROLES)
def search_all_series() -> Response:
    return _search(lambda db, q, base: query.search_series(db, q, base, with_study=True))


@bp.get("/instances")
@require(*ROLES)
def search_all_instances() -> Response:
    return _search(query.search_instances)


@bp.get("/studies/<study>/related/instances")
@require(*ROLES)
def search_related_instances(study: str) -> Response:
    """QIDO-RS instances of the patient of ``study``, in any study (an ebiw extension).

    The viewer finds a patient's earlier studies with it, so the Patient ID never travels in
    a URL's query string (DESIGN §4); other QIDO-RS matching keys still apply.
    """
    patient_id, issuer = _patient_of(_rows(study)[0].attributes[index.DICOM])
    return _search(query.search_instances, *query.patient_filter(patient_id, issuer))


@bp.get("/studies/<study>/series")
@require(*ROLES)
def search_series(study: str) -> Response:
    return _search(lambda db, q, base: query.search_series(db, q, base, with_study=False),
                   Instance.study_uid == study)


@bp.get("/studies/<study>/instances")
@require(*ROLES)
def search_study_instances(study: str) -> Response:
    return _search(query.search_instances, Instance.study_uid == study)


@bp.get("/studies/<study>/series/<series>/instances")
@require(*ROLES)
def search_series_instances(study: str, series: str) -> Response:
    return _search(query.search_instances, Instance.study_uid == study,
                   Instance.series_uid == series)


# --- WADO-RS: instances and metadata ----------------------------------------------------------


def _instances(rows: list[Instance]) -> Response:
    ranges = _ranges()
    if not all(media.accepts_multipart(ranges, media.DICOM, _transfer_syntax(r)) for r in rows):
        raise _not_acceptable("instances")
    archive = services().archive
    parts = [media.Part(f"{media.DICOM}; transfer-syntax={_transfer_syntax(r)}",
                        partial(archive.read, r)) for r in rows]
    marker = media.boundary()
    return Response(media.multipart(parts, marker),
                    content_type=media.multipart_content_type(media.DICOM, marker))


def _at_every_level(resource: str) -> Callable[[LevelView], LevelView]:
    """Route the view at every level's path (and ``/<resource>`` when given), as endpoint
    ``retrieve_<level>`` (``retrieve_<level>_<resource>``): the endpoints are audit actions."""

    def register(view: LevelView) -> LevelView:
        for level, path in LEVELS.items():
            rule, endpoint = (f"{path}/{resource}", f"retrieve_{level}_{resource}") \
                if resource else (path, f"retrieve_{level}")
            bp.add_url_rule(rule, endpoint, view, methods=["GET"])
        return view

    return register


@_at_every_level("")
@require(*ROLES)
def _retrieve(study: str, series: str | None = None, sop: str | None = None) -> Response:
    """The instances of a study, a series or one instance."""
    return _instances(_rows(study, series, sop))


def _metadata_of(row: Instance) -> dict[str, Any]:
    """The cached header with absolute bulk data URIs and the available Transfer Syntax."""
    url = _instance_url(row)
    body: dict[str, Any] = {}
    for tag, element in row.attributes[index.DICOM].items():
        uri = element.get("BulkDataURI", "")
        body[tag] = {**element, "BulkDataURI": f"{url}/{uri}"} if uri.startswith(
            index.BULK_PREFIX) else element
    body["00083002"] = {"vr": "UI", "Value": [_transfer_syntax(row)]}
    return dict(sorted(body.items()))


def _metadata(rows: list[Instance]) -> Response:
    if not media.accepts_json(_ranges()):
        raise _not_acceptable("metadata")
    return Response(json.dumps([_metadata_of(r) for r in rows]), content_type=media.DICOM_JSON)


@_at_every_level("metadata")
@require(*ROLES)
def _retrieve_metadata(study: str, series: str | None = None,
                       sop: str | None = None) -> Response:
    """The metadata of the instances of a study, a series or one instance."""
    return _metadata(_rows(study, series, sop))


# --- WADO-RS: frames and bulk data ------------------------------------------------------------


def _frame_parts(row: Instance) -> Response:
    """The (single) frame as it is stored, in the part type the client accepts."""
    part_type = media.bulk_type(_ranges(), _transfer_syntax(row))
    if part_type is None:
        raise _not_acceptable("pixel data")
    archive = services().archive

    def load() -> bytes:
        return stored_frame(archive.read(row)).frame

    marker = media.boundary()
    part = media.Part(f"{part_type}; transfer-syntax={_transfer_syntax(row)}", load)
    return Response(_until_damaged(media.multipart([part], marker)),
                    content_type=media.multipart_content_type(part_type, marker))


def _single_frame(frames: str) -> None:
    try:
        numbers = {int(n) for n in frames.split(",")}
    except ValueError as exc:
        raise _Refused(400, "invalid_frames", "frames must be a list of frame numbers") from exc
    if numbers != {1}:
        abort(404)  # our photographs are single-frame


@bp.get(f"{INSTANCE}/frames/<frames>")
@require(*ROLES)
def retrieve_frames(study: str, series: str, sop: str, frames: str) -> Response:
    _single_frame(frames)
    return _frame_parts(_rows(study, series, sop)[0])


@bp.get(f"{INSTANCE}/bulkdata/<tag>")
@require(*ROLES)
def retrieve_bulkdata(study: str, series: str, sop: str, tag: str) -> Response:
    row = _rows(study, series, sop)[0]
    tag = tag.upper()
    element = row.attributes[index.DICOM].get(tag, {})
    if not element.get("BulkDataURI"):
        abort(404)
    if tag == index.PIXEL_DATA:
        return _frame_parts(row)
    if not media.accepts_multipart(_ranges(), media.OCTET_STREAM, ExplicitVRLittleEndian):
        raise _not_acceptable("bulk data")
    archive = services().archive

    def load() -> bytes:
        value = pydicom.dcmread(BytesIO(archive.read(row)),
                                stop_before_pixels=True)[int(tag, 16)].value
        return bytes(value)

    marker = media.boundary()
    return Response(media.multipart([media.Part(media.OCTET_STREAM, load)], marker),
                    content_type=media.multipart_content_type(media.OCTET_STREAM, marker))


# --- WADO-RS: rendered images and thumbnails --------------------------------------------------


@overload
def _viewport(default: tuple[int, int]) -> tuple[int, int]: ...


@overload
def _viewport(default: None) -> tuple[int, int] | None: ...


def _viewport(default: tuple[int, int] | None) -> tuple[int, int] | None:
    raw = request.args.get("viewport")
    if not raw:
        return default
    parts = raw.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise _Refused(400, "invalid_viewport",
                       "viewport must be vw,vh in pixels (source regions are not supported)")
    width, height = (int(p) for p in parts)
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise _Refused(400, "invalid_viewport", f"viewport sides must be 1 to {MAX_VIEWPORT}")
    return width, height


def _quality() -> int | None:
    raw = request.args.get("quality")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise _Refused(400, "invalid_quality", "quality must be 1 to 100")
    return int(raw)


def _icc_choice() -> str:
    choice = request.args.get("iccprofile", "yes").lower()
    if choice not in ICC_CHOICES:
        raise _Refused(400, "invalid_iccprofile", "iccprofile must be yes, no or srgb")
    return choice


def _rendered_type(row: Instance, *, moving: bool = False) -> str:
    """The media type to render ``row`` as, from the request's Accept: an image, or for a
    video clip asked ``moving`` (the rendered resource, not a thumbnail) ``video/mp4`` too,
    first."""
    video = row.sop_class_uid == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    if not _is_image(row):
        raise _not_an_image()
    asked = request.args.get("accept")
    offered = (VIDEO_MP4, *RENDERED_MEDIA_TYPES) if video and moving else RENDERED_MEDIA_TYPES
    chosen = media.rendered_type(media.accepted(asked or request.headers.get("Accept")),
                                 offered)
    if chosen is None:
        raise _not_acceptable("rendered images")
    return chosen


def _image(rendition: Rendition) -> Response:
    return Response(rendition.data, content_type=rendition.media_type)


def _renderer(media_type: str) -> Callable[[Instance], Rendition]:
    """Render an instance's frame as ``media_type`` with this request's ``viewport``,
    ``quality`` and ``iccprofile`` (read now: the function may run after the view returns,
    while a multipart answer streams)."""
    box, quality, icc = _viewport(None), _quality(), _icc_choice()
    archive, max_pixels = services().archive, services().settings.max_pixels

    def render(row: Instance) -> Rendition:
        data = archive.read(row)
        if media_type == VIDEO_MP4:  # the clip as recorded
            header = row.attributes.get(index.DICOM, {})
            columns, rows = ((header.get(tag, {}).get("Value") or [0])[0]
                             for tag in ("00280011", "00280010"))
            return Rendition(stored_clip(data), VIDEO_MP4, columns, rows)
        stored = _still(row, data, max_pixels)
        return render_frame(stored.frame, box=box, media_type=media_type, quality=quality,
                            icc_profile=None if icc == "no" else stored.icc_profile,
                            to_srgb=icc == "srgb", max_pixels=max_pixels)

    return render


@bp.get(f"{INSTANCE}/rendered")
@bp.get(f"{INSTANCE}/frames/<frames>/rendered")
@require(*ROLES)
def retrieve_rendered(study: str, series: str, sop: str, frames: str = "1") -> Response:
    _single_frame(frames)
    row = _rows(study, series, sop)[0]
    media_type = _rendered_type(row, moving=True)
    rendition = _renderer(media_type)(row)
    response = _image(rendition)
    if media_type == VIDEO_MP4:  # a <video> reads the clip by byte ranges as it plays and seeks
        response.make_conditional(request, accept_ranges=True,  # sets 206 and the range
                                  complete_length=len(rendition.data))
    return response


def _multipart_rendered_type(rows: list[Instance]) -> str | None:
    """The part type when the client asks for ``multipart/related`` renderings (``type``
    absent, a wildcard or one we render), else None: one image is wanted."""
    ranges = media.accepted(request.args.get("accept") or request.headers.get("Accept"))
    asked = [r for r in ranges if r.media_type == "multipart/related"]
    if not asked:
        return None
    if not all(_is_image(r) for r in rows):
        raise _not_an_image()
    for r in asked:
        inner = media.accepted(r.params.get("type") or "*/*")
        chosen = media.rendered_type(inner, RENDERED_MEDIA_TYPES)
        if chosen is not None:
            return chosen
    raise _not_acceptable("rendered images")


@bp.get("/studies/<study>/rendered", endpoint="retrieve_study_rendered")
@bp.get("/studies/<study>/series/<series>/rendered", endpoint="retrieve_series_rendered")
@require(*ROLES)
def retrieve_rendered_set(study: str, series: str | None = None) -> Response:
    """Rendered Study and Rendered Series (PS3.18 10.4.1.1.3: one or more renderings).

    Asked for ``multipart/related`` (``type`` image/jpeg or image/png), every instance rendered,
    one part each, in series and instance order; otherwise one image, of the first instance
    (the one the thumbnail shows), which the audit record then names alone.
    """
    rows = _rows(study, series)
    part_type = _multipart_rendered_type(rows)
    if part_type is None:
        first = _first_image(rows)
        g.audit_entities = [f"study:{study}", f"instance:{first.sop_uid}",
                            *_patients([first.attributes[index.DICOM]])]
        return _image(_renderer(_rendered_type(first))(first))
    render = _renderer(part_type)
    marker = media.boundary()
    parts = [media.Part(part_type, partial(lambda row: render(row).data, r)) for r in rows]
    return Response(_until_damaged(media.multipart(parts, marker)),
                    content_type=media.multipart_content_type(part_type, marker))


def _thumbnail_file(row: Instance) -> Path:
    """Where the default thumbnail of an instance is cached (named by its content hash)."""
    folder = services().settings.data_dir / "cache" / "thumbnails" / row.study_uid
    return folder / f"{row.sop_uid}-{row.sha256[:16]}.jpg"


def _cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _store(path: Path, data: bytes) -> None:
    """Write a cache file atomically (a reader never sees half of it); no fsync: a cache.

    Best effort: a failure (disk full, the cache emptied meanwhile) is logged, not raised.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("thumbnail cache not written: %s", type(exc).__name__)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _thumbnail(row: Instance) -> Response:
    media_type = _rendered_type(row)
    box, icc = _viewport(THUMBNAIL_BOX), _icc_choice()
    cacheable = (box, icc, media_type) == (THUMBNAIL_BOX, "yes", "image/jpeg")
    cached = _thumbnail_file(row)
    data = _cached(cached) if cacheable else None
    if data is None:
        max_pixels = services().settings.max_pixels
        stored = _still(row, services().archive.read(row), max_pixels)
        data = render_thumbnail(stored.frame, box=box, media_type=media_type,
                                icc_profile=None if icc == "no" else stored.icc_profile,
                                to_srgb=icc == "srgb", max_pixels=max_pixels).data
        if cacheable:
            _store(cached, data)
    response = Response(data, content_type=media_type)
    response.headers["Cache-Control"] = THUMBNAIL_CACHE_CONTROL
    response.headers["Vary"] = "Authorization, Cookie"
    return response


@_at_every_level("thumbnail")
@require(*ROLES)
def _retrieve_thumbnail(study: str, series: str | None = None,
                        sop: str | None = None) -> Response:
    """The thumbnail of an instance; of a study's or series' first one, which the audit
    record then names."""
    row = _first_image(_rows(study, series, sop))
    if sop is None:
        g.audit_entities = [f"study:{study}", f"instance:{row.sop_uid}",
                            *_patients([row.attributes[index.DICOM]])]
    return _thumbnail(row)
