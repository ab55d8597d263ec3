"""Faulty PACSs: 503 for a while, a refused association, permanent rejections (HTTP 4xx,
DIMSE failure statuses) that become dead letters with a reason, then an admin retry."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.delivery.conftest import NOCHART, PATIENT, Deployment, Orthanc, free_port, wait_for
from tests.delivery.fakes import FakeScp, FakeStow, ok, refused


def only_state(d: Deployment, session: dict) -> tuple[str, str | None]:
    [row] = d.states(session["study_instance_uid"])
    return row.state, row.reason


def admin_retry(d: Deployment, session: dict) -> None:
    [row] = d.states(session["study_instance_uid"])
    response = d.client.post(f"/admin/api/deliveries/{row.id}/retry",
                             headers=d.headers["admin"])
    assert response.status_code == 200 and response.get_json()["state"] == "queued"


def test_pacs_answering_503_for_a_while(deploy: Callable[..., Deployment],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PACS_TOKEN", "s3cret-token")
    server = FakeStow(lambda n, uids: (503, None) if n <= 6 else ok(n, uids))
    try:
        d = deploy([{"name": "pacs", "type": "stow-rs", "url": server.url,
                     "auth": {"type": "bearer", "token_env": "TEST_PACS_TOKEN"}}])
        session = d.open_session()
        sops = [d.upload(session, p)["sop_instance_uid"] for p in [NOCHART] * 3]
        seen: set[str] = set()

        def delivered() -> bool:
            body = d.client.get(f"/api/v1/sessions/{session['id']}",
                                headers=d.headers["view"]).get_json()
            states = [x for p in body["photos"] for x in p["deliveries"]]
            seen.update(f"{x['state']}: {x['reason']}" for x in states)
            return all(x["state"] == "sent" for x in states)

        background = d.background()
        try:
            wait_for(delivered, 20, "delivery after the 503s")
        finally:
            background.stop()
        assert "failed: HTTP 503 from the PACS" in seen
        assert server.requests == 7 and dict(server.stored) == dict.fromkeys(sops, 1)
        assert set(server.auth) == {"Bearer s3cret-token"}
    finally:
        server.close()


def test_refused_association(deploy: Callable[..., Deployment],
                             orthancs: Callable[[], Orthanc]) -> None:
    pacs = orthancs().start()
    closed = free_port()
    wrong = {"name": "pacs", "type": "c-store", "host": "127.0.0.1", "port": pacs.dicom,
             "called_aet": "NOT-ORTHANC"}
    d = deploy([wrong, {"name": "nobody", "type": "c-store", "host": "127.0.0.1",
                        "port": closed, "called_aet": "ANY", "match": {"source": "patient"}}])
    session = d.open_session()
    nobody = d.open_session(source="patient")
    d.upload(session, NOCHART)
    d.upload(nobody, NOCHART)
    worker = d.worker()
    worker.drain()
    assert only_state(d, session) == ("dead",
                                      "association rejected: called ae title not recognised")
    states = {s.destination: (s.state, s.reason) for s in d.states(nobody["study_instance_uid"])}
    assert states["nobody"] == ("failed", "cannot associate with the PACS")  # retried later
    assert states["pacs"][0] == "dead"

    # The admin fixes the AE title (a restart reads the file again) and retries.
    fixed = deploy([{**wrong, "called_aet": "ORTHANC"}])
    admin_retry(fixed, session)
    fixed.worker().drain()
    assert only_state(fixed, session) == ("sent", None)
    assert len(pacs.instances(session["study_instance_uid"])) == 1


def test_permanent_rejections_are_dead_letters_and_admin_retry_works(
        deploy: Callable[..., Deployment]) -> None:
    scp = FakeScp([0xA700, 0xC211])
    server = FakeStow(lambda n, uids: (409, refused(uids, 0xA900)) if n <= 2 else ok(n, uids))
    try:
        d = deploy([{"name": "dimse", "type": "c-store", "host": "127.0.0.1", "port": scp.port,
                     "called_aet": "FAKESCP", "match": {"department": "Dermatology"}},
                    {"name": "stow", "type": "stow-rs", "url": server.url,
                     "match": {"department": "Wound care"}}])
        dimse = d.open_session(department="Dermatology")
        stow = d.open_session(department="Wound care")
        d.upload(dimse, NOCHART)
        d.upload(stow, NOCHART)
        worker = d.worker()

        worker.run_once()
        worker.run_once()
        assert only_state(d, dimse) == ("failed", "PACS out of resources (status 0xA700)")
        assert only_state(d, stow) == ("dead", "PACS refused the instance (status 0xA900)")
        wait_for(lambda: worker.run_once(), 2, "the retry of the out-of-resources store")
        assert only_state(d, dimse) == ("dead", "PACS refused the instance (status 0xC211)")
        assert worker.drain() == 0  # dead letters wait for an admin

        listed = d.client.get("/admin/api/deliveries?state=dead",
                              headers=d.headers["admin"]).get_json()
        assert {(x["destination"], x["reason"]) for x in listed["deliveries"]} == {
            ("dimse", "PACS refused the instance (status 0xC211)"),
            ("stow", "PACS refused the instance (status 0xA900)")}
        text = json.dumps(listed)
        assert PATIENT["id"] not in text and "ALICE" not in text

        admin_retry(d, dimse)
        admin_retry(d, stow)
        worker.drain()  # the STOW server refuses once more
        assert only_state(d, dimse) == ("sent", None) and only_state(d, stow)[0] == "dead"
        assert d.client.post("/admin/api/deliveries/retry", json={},
                             headers=d.headers["admin"]).get_json() == {"retried": 1}
        worker.drain()
        assert only_state(d, stow) == ("sent", None)
        assert list(scp.stored.values()) == [1] and list(server.stored.values()) == [1]
    finally:
        scp.close()
        server.close()
