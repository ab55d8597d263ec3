"""atheris harness: barcode payloads → wristband rules (built-in, and every kind configured).

Run: ``.venv/bin/python tests/fuzz/fuzz_wristband.py -max_total_time=600 CORPUS_DIR``.
A crash is any exception other than ``NoWristbandRuleMatched``, or an identifier that breaks
what a match guarantees (an MRN that is empty or not part of the payload's text).
"""

from __future__ import annotations

import atheris
from harness import main

with atheris.instrument_imports(include=["app"]):
    from app.pipeline.wristband import (
        DEFAULT_RULES,
        NoWristbandRuleMatched,
        parse_wristband,
        rules_from_config,
    )

SYMBOLOGIES = ("Code128", "Code39", "QRCode", "PDF417", "DataMatrix")
CONFIGURED = tuple(rules_from_config([
    {"name": "gs1", "kind": "gs1", "issuer": "HOSP-A"},
    {"name": "cx", "pattern": r"^(?P<mrn>[^\^]{1,20})\^\^\^(?P<issuer>[^\^]{1,20})\^MR$"},
    {"name": "pair", "pattern": r"^(?P<mrn>\d{6,10})\|(?P<encounter>[A-Z0-9-]{1,16})$"},
]))


def test_one_input(data: bytes) -> None:
    """One payload under each rule set: a match whose MRN comes from the payload, or a
    clean refusal."""
    provider = atheris.FuzzedDataProvider(data)
    symbology = SYMBOLOGIES[provider.ConsumeIntInRange(0, len(SYMBOLOGIES) - 1)]
    payload = provider.ConsumeUnicodeNoSurrogates(512)
    for rules in (DEFAULT_RULES, CONFIGURED):
        try:
            found = parse_wristband(payload, symbology, rules)
        except NoWristbandRuleMatched:
            continue
        assert found.mrn and found.mrn.strip() == found.mrn, (payload, found)
        assert found.mrn in payload or found.mrn.lstrip("0") in payload, (payload, found)


if __name__ == "__main__":
    main(test_one_input)
