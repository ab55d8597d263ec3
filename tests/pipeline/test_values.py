"""The one place DICOM value rules live: what each VR takes, how it is normalized, and an error
that names the caller's field and never the value."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from app.pipeline.dicom import values
from app.pipeline.dicom.values import SH, InvalidValue


@pytest.mark.parametrize(("value", "expected"), [
    ("00123456", "00123456"),
    ("  HOSP A  ", "HOSP A"),
    ("Müller-Lüdenscheid", "Müller-Lüdenscheid"),
    ("x" * 64, "x" * 64),
    (None, None),
    ("", None),
    ("   ", None),
])
def test_lo_takes_text_of_64_characters_stripped(value: str | None,
                                                  expected: str | None) -> None:
    assert values.text(value, "mrn") == expected


@pytest.mark.parametrize("value", [
    "0012\t3456", "0012\\3456", "a\nb", "a\x00b", "a\x7fb", "a\x85b", "a\udc80b", " \t",
    "x" * 65, 12345, ["1"],
])
def test_lo_refuses_what_the_attribute_cannot_hold_naming_the_field_not_the_value(
        value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        values.text(value, "groups[0].mrn")
    assert caught.value.field == "groups[0].mrn"
    assert str(caught.value).startswith("groups[0].mrn must be ")
    assert str(value) not in str(caught.value)


def test_required_sh_and_tighter_limits() -> None:
    with pytest.raises(InvalidValue, match=r"^patient\.id is required$"):
        values.text("  ", "patient.id", required=True)
    assert values.text("A" * 16, "accession_number", SH) == "A" * 16
    with pytest.raises(InvalidValue, match="at most 16 characters"):
        values.text("A" * 17, "accession_number", SH)
    with pytest.raises(InvalidValue, match="at most 36 characters"):
        values.text("v" * 37, "description", max_chars=36)


@pytest.mark.parametrize(("value", "ok"), [
    ("DOE^JANE", True),
    ("DOE^JANE^M^DR^JR", True),
    ("DOE^JANE^M^DR^JR^X", False),  # six components
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", True),
    ("A=B=C=D", False),  # four component groups
    ("D" * 64 + "=" + "E" * 64, True),
    ("D" * 65, False),
    ("DOE\\JANE", False),
    ("DOE\tJANE", False),
])
def test_person_names_follow_pn_groups_and_components(value: str, ok: bool) -> None:
    if ok:
        assert values.person_name(value, "patient.name") == value
    else:
        with pytest.raises(InvalidValue, match=r"^patient\.name must be a person name"):
            values.person_name(value, "patient.name")


@pytest.mark.parametrize(("value", "ok"), [
    ("1.2.840.10008.5.1.4.1.1.77.1.4", True), ("2.25.0", True), ("1.02.3", False),
    ("1", False), ("1.2.abc", False), ("1." + "2" * 70, False), (None, False),
])
def test_uids(value: str | None, ok: bool) -> None:
    if ok:
        assert values.uid(value, "study_instance_uid") == value
    else:
        with pytest.raises(InvalidValue, match=r"^study_instance_uid must be a DICOM UID$"):
            values.uid(value, "study_instance_uid")


def test_dates_and_times() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-5)))
    assert values.da(date(2026, 3, 4)) == "20260304"
    assert values.tm(moment) == "050607"
    assert values.tm(moment.replace(microsecond=1200)) == "050607.001200"
    assert values.dt(moment) == "20260304050607-0500"
    assert values.dt(moment.replace(tzinfo=None)) == "20260304050607"
