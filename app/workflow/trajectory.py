"""The healing trajectory of one wound: its measured size at each visit, and how it changed.

A wound is followed by its Tracking Unique Identifier (the same for the same patient and wound
label at every visit, `app.workflow.measurements.tracking_uid`), so a trajectory is asked for
by that UID alone and never by a patient identifier.

Rules (the README states them too):

- **A visit** is one capture session (one study); its time is the time the measured photo was
  taken (``taken_at``), and visits are ordered by it. A measurement whose report or photo was
  rejected (IHE IOCM: a bad photo, or a study moved to another patient, whose copy is then
  the right patient's wound) is no part of any trajectory.
- **Several reports in one visit:** the latest report on that wound in that visit counts (the
  largest ``measured_at``, then the later stored row); earlier ones were superseded by a
  re-measurement.
- **Within a report:** the area is the sum of its traced regions' areas (a wound traced in
  parts), the length its longest line, the width its largest width value; a quantity the
  report does not hold is left out. Uncertainties of summed areas add in quadrature.
- **Changes** of a quantity are since the first visit and since the previous visit *that
  measured that quantity*: absolute (this − that) and relative (% of that; None when that was 0).
- **4-week area reduction:** ``(baseline − visit) / baseline × 100`` between the first visit
  with an area (baseline) and the later visit with an area nearest 28 days after it, among
  visits 21 to 35 days after the baseline; None (with the reason) when there is no such visit.
  The figure is the one studied by Sheehan P, Jones P, Caselli A, Giurini JM, Veves A.
  *Percent change in wound area of diabetic foot ulcers over a 4-week period is a robust
  predictor of complete healing in a 12-week prospective trial.* Diabetes Care
  2003;26(6):1879-82: in 203 patients, the midpoint between the 4-week reductions of the ulcers
  that healed by 12 weeks and of those that did not was 53 %. It is reported as measured, with
  the visits used; no prediction is made from it here.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from app.db.models import CaptureSession, Quantity, WoundMeasurement, as_utc
from app.workflow.services import Services

FOUR_WEEKS = timedelta(days=28)
FOUR_WEEK_WINDOW = (timedelta(days=21), timedelta(days=35))
"""The visits that may stand for "4 weeks after the baseline": 3 to 5 weeks after it."""
PREDICTOR_REDUCTION_PERCENT = 53.0
"""The 4-week area reduction Sheehan et al. (2003) found between ulcers that healed by 12 weeks
and those that did not, quoted on the page as the reference figure."""
TRACKED: tuple[Quantity, ...] = (Quantity.AREA, Quantity.LENGTH, Quantity.WIDTH)
"""The quantities a trajectory follows, in the order pages and CSV show them."""


@dataclass(frozen=True)
class Change:
    """How a value changed from a reference value: ``absolute`` (value − reference, in the
    value's unit) and ``percent`` (of the reference; None when the reference is 0)."""

    absolute: float
    percent: float | None


@dataclass(frozen=True)
class Figure:
    """One quantity at one visit: its value and standard uncertainty (mm or mm²), and its
    change since the first and since the previous visit that measured it (None at the first)."""

    value: float
    uncertainty: float
    since_first: Change | None
    since_previous: Change | None


@dataclass(frozen=True)
class Visit:
    """One visit of the wound: when the photo was taken, the study, the report that counts and
    the photo it measured, and its figures by quantity (only those the report holds)."""

    taken_at: datetime
    study_uid: str
    report_sop_uid: str
    photo_sop_uid: str
    figures: dict[Quantity, Figure]


@dataclass(frozen=True)
class FourWeekReduction:
    """The 4-week area reduction: ``percent`` (positive = smaller) between the ``baseline`` and
    the ``week4`` visit (``days`` apart), or None with ``reason`` when it cannot be given."""

    percent: float | None
    baseline: Visit | None
    week4: Visit | None
    days: float | None
    reason: str | None


@dataclass(frozen=True)
class Trajectory:
    """A wound's visits in time order, its label and patient (for the page and the audit), and
    its 4-week area reduction."""

    tracking_uid: str
    wound_label: str
    patient_id: str
    issuer: str
    patient_name: str | None
    visits: list[Visit]
    four_week: FourWeekReduction


class UnknownWound(LookupError):
    """No measurement has this tracking UID."""


def wound_trajectory(services: Services, tracking_uid: str) -> Trajectory:
    """The trajectory of the wound ``tracking_uid``, without the measurements whose report or
    photo was rejected; raises `UnknownWound` when no other measurement has that UID. Reads
    the ``wound_measurement`` and ``instance`` indexes only (no file)."""
    with services.db.session() as db:
        rows = db.scalars(select(WoundMeasurement)
                          .where(WoundMeasurement.tracking_uid == tracking_uid,
                                 WoundMeasurement.shown())
                          .order_by(WoundMeasurement.id)).all()
        if not rows:
            raise UnknownWound(tracking_uid)
        session = db.get(CaptureSession, rows[-1].session_id)
        if session is None:  # the foreign key keeps a measured session
            raise UnknownWound(tracking_uid)
        visits = trajectory_visits(rows)
        return Trajectory(tracking_uid, rows[-1].wound_label, session.patient_id,
                          session.issuer, session.patient_name, visits,
                          four_week_reduction(visits))


def trajectory_visits(rows: Iterable[WoundMeasurement]) -> list[Visit]:
    """The visits of one wound's measurement rows, by the module's rules, in time order
    (then by study UID for visits at the same time)."""
    reports: dict[str, list[WoundMeasurement]] = {}
    for row in rows:
        reports.setdefault(row.report_sop_uid, []).append(row)
    latest: dict[str, list[WoundMeasurement]] = {}  # session id -> the report that counts
    for report in reports.values():
        current = latest.get(report[0].session_id)
        if current is None or _report_order(report) > _report_order(current):
            latest[report[0].session_id] = report
    chosen = sorted(latest.values(),
                    key=lambda r: (as_utc(r[0].taken_at), r[0].study_uid))
    values = [_report_values(report) for report in chosen]
    figures: list[dict[Quantity, Figure]] = [{} for _ in chosen]
    for quantity in TRACKED:
        first: float | None = None
        previous: float | None = None
        for n, measured in enumerate(values):
            if quantity not in measured:
                continue
            value, uncertainty = measured[quantity]
            figures[n][quantity] = Figure(
                value, uncertainty,
                None if first is None else _change(value, first),
                None if previous is None else _change(value, previous))
            first = value if first is None else first
            previous = value
    return [Visit(as_utc(r[0].taken_at), r[0].study_uid, r[0].report_sop_uid,
                  r[0].photo_sop_uid, f) for r, f in zip(chosen, figures, strict=True)]


def four_week_reduction(visits: Sequence[Visit]) -> FourWeekReduction:
    """The 4-week area reduction of time-ordered ``visits`` (see the module's rule)."""
    with_area = [v for v in visits if Quantity.AREA in v.figures]
    if not with_area:
        return FourWeekReduction(None, None, None, None, "no visit has an area")
    baseline = with_area[0]
    low, high = FOUR_WEEK_WINDOW
    candidates = [v for v in with_area[1:]
                  if low <= v.taken_at - baseline.taken_at <= high]
    if not candidates:
        return FourWeekReduction(None, baseline, None, None,
                                 "no visit 3 to 5 weeks after the first area measurement")
    week4 = min(candidates, key=lambda v: abs(v.taken_at - baseline.taken_at - FOUR_WEEKS))
    start = baseline.figures[Quantity.AREA].value
    if start <= 0:
        return FourWeekReduction(None, baseline, week4, None, "the baseline area is 0")
    days = (week4.taken_at - baseline.taken_at) / timedelta(days=1)
    percent = (start - week4.figures[Quantity.AREA].value) / start * 100
    return FourWeekReduction(percent, baseline, week4, days, None)


UNITS = {Quantity.AREA: "mm2", Quantity.LENGTH: "mm", Quantity.WIDTH: "mm"}


def csv_columns() -> list[str]:
    """The header of :func:`trajectory_csv`."""
    columns = ["taken_at", "study_instance_uid", "report_sop_instance_uid", "tracking_uid",
               "wound_label"]
    for quantity in TRACKED:
        name = f"{quantity.value}_{UNITS[quantity]}"
        columns += [name, f"{name}_uncertainty", f"{name}_change_since_first",
                    f"{quantity.value}_percent_change_since_first",
                    f"{name}_change_since_previous",
                    f"{quantity.value}_percent_change_since_previous"]
    return [*columns, "four_week_role", "four_week_area_reduction_percent"]


def trajectory_csv(trajectory: Trajectory) -> str:
    """The trajectory as CSV (RFC 4180, CRLF): the :func:`csv_columns` header, then one row per
    visit in time order with the figures of the page (empty where a quantity or change is
    absent); the 4-week reduction on the row of the visit used as week 4, the baseline and
    week-4 visits named in ``four_week_role``. Times in UTC ISO 8601; values with 2 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(csv_columns())
    four = trajectory.four_week
    for visit in trajectory.visits:
        row: list[str] = [visit.taken_at.isoformat(), visit.study_uid, visit.report_sop_uid,
                          trajectory.tracking_uid, trajectory.wound_label]
        for quantity in TRACKED:
            figure = visit.figures.get(quantity)
            if figure is None:
                row += [""] * 6
                continue
            row += [_number(figure.value), _number(figure.uncertainty)]
            for change in (figure.since_first, figure.since_previous):
                row += ["", ""] if change is None else [_number(change.absolute),
                                                         _number(change.percent)]
        role = "baseline" if visit is four.baseline else "week 4" if visit is four.week4 else ""
        row += [role, _number(four.percent) if visit is four.week4 else ""]
        writer.writerow(row)
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _report_order(report: Sequence[WoundMeasurement]) -> tuple[datetime, int]:
    """Which of two reports of a visit is the later: measured later, then stored later."""
    return as_utc(report[0].measured_at), max(r.id for r in report)


def _report_values(report: Sequence[WoundMeasurement]) -> dict[Quantity, tuple[float, float]]:
    """(value, uncertainty) of each tracked quantity one report holds, by the module's rule."""
    out: dict[Quantity, tuple[float, float]] = {}
    areas = [r for r in report if r.quantity == Quantity.AREA]
    if areas:
        out[Quantity.AREA] = (sum(r.value for r in areas),
                              math.sqrt(sum(r.uncertainty ** 2 for r in areas)))
    for quantity in (Quantity.LENGTH, Quantity.WIDTH):
        rows = [r for r in report if r.quantity == quantity]
        if rows:
            longest = max(rows, key=lambda r: r.value)
            out[quantity] = (longest.value, longest.uncertainty)
    return out


def _change(value: float, reference: float) -> Change:
    return Change(value - reference,
                  None if reference == 0 else (value - reference) / reference * 100)
