"""Wristband rules: every default format, GS1 check digits, configuration and its errors."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import zxingcpp

from app.pipeline.identify import read_barcodes_array
from app.pipeline.wristband import (
    DEFAULT_RULES,
    GS,
    NoWristbandRuleMatched,
    Rule,
    WristbandId,
    gs1_check_digit_ok,
    parse_wristband,
    rules_from_config,
)

GSRN = "123456789012345675"  # 17 digits + check digit 5
BAD_GSRN = "123456789012345674"


@pytest.mark.parametrize(("payload", "expected"), [
    ("00123456", WristbandId("00123456", None, None, "digits")),
    (" 123456789012 ", WristbandId("123456789012", None, None, "digits")),
    ("MRN:00123456", WristbandId("00123456", None, None, "prefixed")),
    ("MRN00123456", WristbandId("00123456", None, None, "prefixed")),
    ("mr#00123456", WristbandId("00123456", None, None, "prefixed")),
    ("M00123456", WristbandId("00123456", None, None, "prefixed")),
    ("00123456^^^HOSP^MR", WristbandId("00123456", "HOSP", None, "hl7-cx")),
    ("00123456^^^HOSP", WristbandId("00123456", "HOSP", None, "hl7-cx")),
    ("00123456^^^HOSP&1.2.3&ISO^MR", WristbandId("00123456", "HOSP", None, "hl7-cx")),
    ("00123456^^^&1.2.3&ISO^PI", WristbandId("00123456", "1.2.3", None, "hl7-cx")),
    ("A123^4^M10^HOSP^MR^WARD1", WristbandId("A123", "HOSP", None, "hl7-cx")),
    ("00123456^^^HOSP^MR~E123^^^HOSP^VN",
     WristbandId("00123456", "HOSP", "E123", "hl7-cx-encounter")),
    ("00123456^^^HOSP&1.2.3&ISO^MR~987654^^^HOSP^AN",
     WristbandId("00123456", "HOSP", "987654", "hl7-cx-encounter")),
    ("MRN00123456|FIN987654", WristbandId("00123456", None, "987654", "mrn-encounter")),
    ("MRN:00123456; ENC:E-42", WristbandId("00123456", None, "E-42", "mrn-encounter")),
    ("MR=00123456 CSN=5551234", WristbandId("00123456", None, "5551234", "mrn-encounter")),
    (f"(8018){GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
    (f"(8018){GSRN}(8019)42", WristbandId(GSRN, None, "42", "gs1-gsrn")),
    (f"8018{GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
    (f"8018{GSRN}{GS}801942", WristbandId(GSRN, None, "42", "gs1-gsrn")),
    (f"]C18018{GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
    (f"]d28018{GSRN}{GS}8019123", WristbandId(GSRN, None, "123", "gs1-gsrn")),
    (f"{GS}8018{GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
    (f"0108903819987659{GS}8018{GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
    (f"010890381998765917310630{GS}8018{GSRN}", WristbandId(GSRN, None, None, "gs1-gsrn")),
])
def test_default_rules(payload: str, expected: WristbandId) -> None:
    assert parse_wristband(payload, "Code128") == expected


@pytest.mark.parametrize("payload", [
    f"(8018){BAD_GSRN}", f"]C18018{BAD_GSRN}", f"{GS}8018{BAD_GSRN}",
    f"(8018){BAD_GSRN}(8019)42",
])
def test_gs1_bad_check_digit_is_rejected_with_a_reason(payload: str) -> None:
    anything = Rule("anything", pattern=r"(?P<mrn>.+)")
    with pytest.raises(NoWristbandRuleMatched) as caught:
        parse_wristband(payload, "DataMatrix", [*DEFAULT_RULES, anything])
    assert caught.value.reasons == ("rule gs1-gsrn: the (8018) GSRN check digit does not verify",)
    assert "check digit does not verify" in str(caught.value)
    assert BAD_GSRN not in str(caught.value)  # payloads are PHI: never in messages


def test_unmarked_gs1_with_bad_check_digit_falls_through_to_later_rules() -> None:
    """Bare digits may be no GS1 at all (zbar cannot tell), so later rules still run."""
    payload = f"8018{BAD_GSRN}"
    with pytest.raises(NoWristbandRuleMatched) as caught:
        parse_wristband(payload, "Code128")
    assert caught.value.reasons == ("rule gs1-gsrn: the (8018) GSRN check digit does not verify",)
    digits = Rule("long-digits", pattern=r"(?P<mrn>\d{22})")
    assert parse_wristband(payload, "Code128", [*DEFAULT_RULES, digits]).rule == "long-digits"


@pytest.mark.parametrize(("payload", "reason"), [
    ("(8018)12345678901234567", "the (8018) GSRN must be 18 digits"),
    (f"(8018){GSRN}(8019)12345678901", "the (8019) SRIN must be 1-10 digits"),
])
def test_gs1_malformed_fields_are_rejected(payload: str, reason: str) -> None:
    with pytest.raises(NoWristbandRuleMatched) as caught:
        parse_wristband(payload, "Code128")
    assert caught.value.reasons == (f"rule gs1-gsrn: {reason}",)


@pytest.mark.parametrize("digits", [GSRN, "08903819987659", "4006381333931", "00012345600012"])
def test_gs1_check_digit_accepts_valid_keys(digits: str) -> None:
    assert gs1_check_digit_ok(digits)


@pytest.mark.parametrize("digits", [BAD_GSRN, "08903819987658", "4006381333932", "7", "12a4"])
def test_gs1_check_digit_rejects_others(digits: str) -> None:
    assert not gs1_check_digit_ok(digits)


def test_no_match_carries_payload_and_symbology_but_keeps_them_out_of_the_message() -> None:
    with pytest.raises(NoWristbandRuleMatched) as caught:
        parse_wristband("JOHN DOE 1970-01-01", "QRCode")
    err = caught.value
    assert (err.payload, err.symbology, err.reasons) == ("JOHN DOE 1970-01-01", "QRCode", ())
    assert "JOHN" not in str(err) and "QRCode" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("payload", ["12345", "1234567890123", "MRN:12-34", "00123456^^HOSP"])
def test_near_formats_do_not_match(payload: str) -> None:
    with pytest.raises(NoWristbandRuleMatched):
        parse_wristband(payload, "Code39")


def test_configured_rules_first_match_wins_with_fixed_issuer() -> None:
    rules = rules_from_config([
        {"name": "st-mary", "pattern": r"SM(?P<mrn>\d{7})(?:/(?P<encounter>\d+))?",
         "issuer": "STMARY", "symbologies": ["Code128", "QRCode"]},
        {"name": "gsrn", "kind": "gs1", "issuer": "GS1-HOSP", "gs1_company_prefix": "1234567"},
        {"name": "cx", "pattern": r"(?P<mrn>\w+)\^\^\^(?P<issuer>\w+)\^MR", "issuer": "DEFAULT"},
    ])
    assert parse_wristband("SM0012345/77", "Code128", rules) == WristbandId(
        "0012345", "STMARY", "77", "st-mary")
    assert parse_wristband("SM0012345", "QRCode", rules).encounter is None
    with pytest.raises(NoWristbandRuleMatched):  # symbology not allowed for that rule
        parse_wristband("SM0012345", "DataMatrix", rules)
    # GSRN 1234567 | 8901234567 | 5 → the service reference is the MRN
    assert parse_wristband(f"(8018){GSRN}(8019)9", "DataMatrix", rules) == WristbandId(
        "8901234567", "GS1-HOSP", "9", "gsrn")
    with pytest.raises(NoWristbandRuleMatched):  # another company's GSRN
        parse_wristband("(8018)765432109876543215", "DataMatrix", rules)
    assert parse_wristband("A1^^^HOSP^MR", "Code128", rules).issuer == "HOSP"


def test_configured_rules_survive_json() -> None:
    config = json.loads('[{"name": "plain", "pattern": "(?P<mrn>[0-9]{8})", "issuer": "H"}]')
    (rule,) = rules_from_config(config)
    assert rule == Rule("plain", pattern="(?P<mrn>[0-9]{8})", issuer="H")
    assert parse_wristband("00123456", "Code39", [rule]) == WristbandId("00123456", "H", None,
                                                                       "plain")


@pytest.mark.parametrize(("config", "message"), [
    ([{"pattern": "(?P<mrn>.+)"}], "string 'name'"),
    (["not an object"], "string 'name'"),
    ([{"name": "x", "pattern": "(?P<mrn>.+)", "colour": "red"}], "unknown keys ['colour']"),
    ([{"name": "x", "pattern": r"\d+"}], "group 'mrn'"),
    ([{"name": "x", "pattern": "(?P<mrn>.+)(?P<ward>.)"}], "group 'mrn'"),
    ([{"name": "x", "pattern": "(?P<mrn>.+"}], "bad pattern"),
    ([{"name": "x", "kind": "lua"}], "kind must be"),
    ([{"name": "x", "kind": "gs1", "pattern": "(?P<mrn>.+)"}], "takes no pattern"),
    ([{"name": "x", "kind": "gs1", "gs1_company_prefix": "12"}], "6-12 digits"),
    ([{"name": "x", "pattern": "(?P<mrn>.+)", "gs1_company_prefix": "1234567"}], "needs kind"),
    ([{"name": "x", "pattern": "(?P<mrn>.+)", "symbologies": ["EAN13"]}], "unknown symbologies"),
    ([{"name": "x", "pattern": "(?P<mrn>.+)"}, {"name": "x", "kind": "gs1"}], "duplicate name"),
])
def test_bad_configuration_is_refused(config: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        rules_from_config(config)


def _printed(content: str, fmt: zxingcpp.BarcodeFormat) -> np.ndarray:
    """A GS1 symbol as printed on a band: zxing-cpp writer, grey, with a white margin."""
    image = np.asarray(zxingcpp.create_barcode(content, fmt, gs1=True).to_image(scale=4))
    return cv2.copyMakeBorder(image, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=255)


@pytest.mark.parametrize("fmt", [zxingcpp.BarcodeFormat.Code128,
                                 zxingcpp.BarcodeFormat.DataMatrix,
                                 zxingcpp.BarcodeFormat.QRCode])
def test_gs1_symbols_from_the_reader_parse(fmt: zxingcpp.BarcodeFormat) -> None:
    (barcode,) = read_barcodes_array(_printed(f"(8018){GSRN}(8019)42", fmt))
    assert barcode.gs1 and barcode.payload == f"8018{GSRN}{GS}801942"
    assert parse_wristband(barcode.payload, barcode.symbology) == WristbandId(
        GSRN, None, "42", "gs1-gsrn")
    hri = zxingcpp.read_barcodes(_printed(f"(8018){GSRN}", fmt))[0].text  # zxing-cpp default
    assert hri == f"(8018){GSRN}"
    assert parse_wristband(hri, barcode.symbology).mrn == GSRN
