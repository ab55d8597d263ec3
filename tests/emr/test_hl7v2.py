"""HL7 v2 ORU^R01 over MLLP against a loopback listener that parses, checks and acknowledges."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask import Flask

from app.db.models import Hl7Notice
from app.gateways.emr import build_notifiers
from app.gateways.emr.hl7v2 import Hl7v2Notifier, control_id
from app.gateways.errors import PermanentError, TransientError
from tests.conftest import services
from tests.emr.conftest import add_photo, make_study, notify
from tests.mllp_peer import Receiver, mllp_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with mllp_receiver() as state:
        yield state


def _notifier(app: Flask, address: str) -> Hl7v2Notifier:
    settings = replace(services(app).settings, emr_notifiers="local,hl7v2",
                       emr_mllp_address=address, emr_timeout_seconds=1,
                       emr_hl7_receiving_application="EMR",
                       institution_name="General Hospital").checked()
    local, hl7 = build_notifiers(settings)
    assert local.name == "local" and isinstance(hl7, Hl7v2Notifier)
    return hl7


def test_oru_content_and_idempotent_control_ids(app: Flask, receiver: Receiver) -> None:
    notifier = _notifier(app, receiver.address)
    session_id, uid = make_study(app, mrn="00|123", issuer="HOSP^A", name="O'NEIL&CO^ZOË",
                                 accession="ACC42")
    notify(app, notifier, uid)
    notify(app, notifier, uid)  # accepted already: nothing is sent again
    assert len(receiver.received) == 1
    message = receiver.received[0]
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_10.value == control_id(uid, 1)
    assert len(message.msh.msh_10.value) == 20
    assert message.msh.msh_12.value == "2.5.1" and message.msh.msh_18.value == "UNICODE UTF-8"
    result = message.oru_r01_patient_result
    pid = result.oru_r01_patient.pid
    # Separators inside values are escaped, never taken for structure.
    assert pid.pid_3.to_er7() == "00\\F\\123^^^HOSP\\S\\A^MR"
    assert pid.pid_5.to_er7() == "O'NEIL\\T\\CO^ZOË"
    assert (pid.pid_7.value, pid.pid_8.value) == ("19700101", "F")
    assert result.oru_r01_patient.oru_r01_visit.pv1.pv1_19.value == "ENC-42"
    order = result.oru_r01_order_observation
    assert order.obr.obr_4.to_er7() == "XC^External-camera Photography^DCM"
    assert (order.obr.obr_18.value, order.obr.obr_25.value) == ("ACC42", "F")
    values = {o.obx.obx_3.ce_1.value: o.obx.obx_5.to_er7() for o in order.oru_r01_observation}
    assert values == {"110180": uid, "NINST": "1",
                      "VIEWER": f"http://127.0.0.1:8000/studies/{uid}^^TEXT^HTML"}

    add_photo(app, session_id, 1)
    receiver.plan = ["close", "AA"]  # the first attempt loses its answer
    with pytest.raises(TransientError, match="closed the connection"):
        notify(app, notifier, uid)
    notify(app, notifier, uid)
    retried, resent = receiver.received[1:]
    assert retried.msh.msh_10.value == resent.msh.msh_10.value == control_id(uid, 2)
    assert resent.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value == "C"
    with services(app).db.session() as db:
        notice = db.get(Hl7Notice, uid)
        assert (notice.instance_count, notice.control_id) == (2, control_id(uid, 2))


@pytest.mark.parametrize(("answer", "error", "text"), [
    ("AR", TransientError, "rejected the notice for now: AR (error 207)"),
    ("AE", PermanentError, "refused the notice: AE (error 207)"),
    ("CR", PermanentError, "refused the notice: CR (error 207)"),
    ("silent", TransientError, "unreachable (TimeoutError)"),
])
def test_negative_acknowledgements(app: Flask, receiver: Receiver, answer: str,
                                   error: type[Exception], text: str) -> None:
    notifier = _notifier(app, receiver.address)
    _, uid = make_study(app)
    receiver.plan = [answer]
    with pytest.raises(error) as caught:
        notify(app, notifier, uid)
    assert text in str(caught.value)
    assert "MRN0001" not in str(caught.value) and "ALICE" not in str(caught.value)
    with services(app).db.session() as db:
        assert db.get(Hl7Notice, uid) is None  # not accepted: the worker will send it again
    notify(app, notifier, uid)  # the receiver accepts the same message on the next try
    assert [m.msh.msh_10.value for m in receiver.received] == [control_id(uid, 1)] * 2


def test_receiver_down_is_transient(app: Flask) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    _, uid = make_study(app)
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        notify(app, _notifier(app, address), uid)
