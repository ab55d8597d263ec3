"""A syslog collector reached over TCP or TLS (RFC 5425 framing is the caller's; see
``app.pipeline.audit.syslog_message``).

Syslog over a stream has no acknowledgement, so a message written to a connection the
collector has just closed can vanish. Before every write the sender checks that the collector
has not closed its end (a collector never sends: a readable socket means it closed) and
reconnects when it has; a refused connection raises :class:`TransientError`, so the caller keeps
the message and tries again later.
"""

from __future__ import annotations

import select
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.gateways.errors import TransientError

SCHEMES = ("tcp", "tls")


@dataclass(frozen=True)
class SyslogTarget:
    """``tcp://host:port`` or ``tls://host:port``, with the TLS trust anchors and the client
    certificate (ATNA node authentication) when the scheme is ``tls``."""

    scheme: str
    host: str
    port: int
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def parse(cls, url: str, *, ca_file: Path | None = None, cert_file: Path | None = None,
              key_file: Path | None = None) -> SyslogTarget:
        """Parse the target URL; raise ValueError naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname or parts.port is None:
            raise ValueError("the syslog target must be tcp://host:port or tls://host:port")
        return cls(parts.scheme, parts.hostname, parts.port, ca_file, cert_file, key_file)

    @property
    def name(self) -> str:
        """The target as stored with the forwarding cursor (no credentials in it)."""
        return f"{self.scheme}://{self.host}:{self.port}"


class SyslogSender:
    """One connection to the collector, opened on demand and re-opened when it was closed."""

    def __init__(self, target: SyslogTarget, timeout: float = 5.0) -> None:
        self.target = target
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.target.ca_file)
                                             if self.target.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.target.cert_file:
            context.load_cert_chain(str(self.target.cert_file),
                                    str(self.target.key_file) if self.target.key_file else None)
        return context

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.target.host, self.target.port),
                                            timeout=self.timeout)
            if self.target.scheme == "tls":
                sock = self._context().wrap_socket(sock, server_hostname=self.target.host)
        except (OSError, ssl.SSLError) as exc:
            raise TransientError(f"syslog collector unreachable ({type(exc).__name__})") \
                from exc
        return sock

    def _alive(self, sock: socket.socket) -> bool:
        try:
            readable, _, failed = select.select([sock], [], [sock], 0)
        except (OSError, ValueError):
            return False
        return not readable and not failed

    def send(self, frame: bytes) -> None:
        """Write one framed message; raise :class:`TransientError` when it cannot be sent."""
        if self._sock is not None and not self._alive(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise TransientError(f"syslog collector write failed ({type(exc).__name__})") \
                from exc

    def close(self) -> None:
        """Drop the connection (the next :meth:`send` opens a new one)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
