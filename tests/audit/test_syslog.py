"""Forwarding to a syslog collector (RFC 5424, octet-counted over TCP): records written while
the collector is down wait in the database and reach it once it is back, each once, in order."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from app.workflow import audit
from tests.audit.conftest import NODE, PATIENT, make_app
from tests.conftest import services

HEADER = re.compile(rb"^<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z node-a ebiw-capture - "
                    rb"AuditEvent - \xef\xbb\xbf")


class Collector:
    """A tiny TCP syslog collector on a loopback port: reads octet-counted frames."""

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[bytes] = []
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                if len(rest) < int(length):
                    break
                with self._lock:
                    self.messages.append(rest[:int(length)])
                buffer = rest[int(length):]

    def stop(self) -> None:
        """Close the listening socket and every connection (the collector goes away)."""
        if self._server is not None:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._server.close()
        for conn in self._conns:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        return list(self.messages)


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    server.start()
    yield server
    server.stop()


def _append(app: Flask, count: int) -> None:
    for _ in range(count):
        audit.append(services(app).db, "alice", "session.read",
                     audit.patient_ref(PATIENT["id"], PATIENT["issuer"]), outcome=audit.SUCCESS,
                     node=NODE)


def test_records_reach_the_collector_once_in_order_across_an_outage(
        tmp_path: Path, database_url: str, collector: Collector) -> None:
    app = make_app(tmp_path / "var", database_url,
                   audit_syslog=f"tcp://127.0.0.1:{collector.port}")
    forwarder = audit.syslog_forwarder(services(app).db, services(app).settings)
    assert forwarder is not None
    try:
        _append(app, 3)
        assert forwarder.drain() == audit.ForwardResult(3)
        assert len(collector.wait_for(3)) == 3

        collector.stop()  # the collector goes down; records keep coming
        _append(app, 4)
        down = forwarder.drain()
        assert down.sent == 0 and down.error is not None
        assert forwarder.drain().sent == 0  # still down: nothing is lost or skipped

        collector.start()  # back on the same port
        assert forwarder.drain() == audit.ForwardResult(4)
        collector.wait_for(7)
        time.sleep(0.2)  # anything more (a duplicate) would have arrived by now
        messages = collector.wait_for(8, timeout=0.1)
    finally:
        forwarder.stop()
        services(app).db.engine.dispose()
    assert len(messages) == 7
    assert all(HEADER.match(m) for m in messages), messages[0][:120]
    events = [json.loads(HEADER.sub(b"", m)) for m in messages]
    assert [e["id"] for e in events] == [str(n) for n in range(1, 8)]
    assert {e["resourceType"] for e in events} == {"AuditEvent"}
    assert events[0]["entity"][0]["what"]["identifier"]["value"] == PATIENT["id"]


def test_one_forwarder_at_a_time_sends(tmp_path: Path, database_url: str,
                                       collector: Collector) -> None:
    app = make_app(tmp_path / "var", database_url,
                   audit_syslog=f"tcp://127.0.0.1:{collector.port}")
    first = audit.syslog_forwarder(services(app).db, services(app).settings)
    second = audit.syslog_forwarder(services(app).db, services(app).settings)
    assert first is not None and second is not None
    try:
        _append(app, 5)
        assert first.drain().sent == 5
        _append(app, 2)
        assert second.drain().sent == 0  # the first one holds the lease
        assert first.drain().sent == 2
    finally:
        first.stop()
        second.stop()
        services(app).db.engine.dispose()
    assert [json.loads(HEADER.sub(b"", m))["id"] for m in collector.wait_for(7)] == \
        [str(n) for n in range(1, 8)]
