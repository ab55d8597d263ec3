"""``Server-Timing: app;dur=<ms>``: the server's own share of a request, for those who measure.

The header is sent on every response when ``EBIW_SERVER_TIMING`` is on (load tests, the
benchmark), and otherwise only to admins (the app marks their requests with :data:`SHOW`): a
figure per request tells others nothing they need, and its timing may hint at what the server
did (found or not, cached or not).

The clock starts when the request body has been read completely (when the app reads none: when
the request reached the app) and stops when the response's status and headers are ready, so an
upload's figure leaves out the time its bytes spent on the network and is comparable between a
phone on a ward and a client on loopback. It names no resource and holds no PHI; load tests
and the benchmark (``bench/bench_load.py``) read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from flask import Flask, Response, g, request

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SHOW = "ebiw.server_timing"
"""The WSGI environ key the app sets (to True) on a request whose answer gets the header."""


class _TimedInput:
    """``wsgi.input`` that restarts the clock once the last byte of the body is read."""

    def __init__(self, stream: IO[bytes], length: int | None, clock: list[float]) -> None:
        self._stream, self._left, self._clock = stream, length, clock

    def _seen(self, data: bytes, size: int | None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
            if self._left <= 0:
                self._clock[0], self._left = time.perf_counter(), None
        elif not data and size != 0:  # end of a body of unknown length
            self._clock[0] = time.perf_counter()
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._seen(self._stream.read(size if size is not None else -1), size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._seen(self._stream.readline(size if size is not None else -1), size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._seen(line, None) for line in self._stream.readlines(hint)]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class ServerTiming:
    """WSGI middleware adding ``Server-Timing: app;dur=<milliseconds>`` (see the module):
    to every response when ``always``, else to those of requests whose environ has :data:`SHOW`
    set by the app before it starts its response."""

    def __init__(self, app: WsgiApp, *, always: bool = False) -> None:
        self.app = app
        self.always = always

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Call the app with the timed input; the header is added to what it answers when
        :attr:`always` or when the app set :data:`SHOW` in ``environ``."""
        clock = [time.perf_counter()]
        try:
            length: int | None = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            length = None
        if length != 0:
            environ["wsgi.input"] = _TimedInput(environ["wsgi.input"], length, clock)

        def timed(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            if self.always or environ.get(SHOW):
                elapsed = (time.perf_counter() - clock[0]) * 1000
                headers.append(("Server-Timing", f"app;dur={elapsed:.1f}"))
            return start_response(status, headers, *exc_info)

        return self.app(environ, timed)


def init_app(app: Flask, *, always: bool) -> None:
    """Wrap ``app`` in :class:`ServerTiming`. Unless ``always``, the header goes only to
    admins: to requests whose caller (checked by ``require``, or the web login looked up for
    the request) has the admin role; no credentials are looked up for this alone."""
    app.wsgi_app = ServerTiming(app.wsgi_app, always=always)  # type: ignore[method-assign]
    if always:
        return

    @app.after_request
    def show_to_admins(response: Response) -> Response:
        login = g.get("web_login")
        caller = g.get("caller") or (login.caller if login is not None else None)
        if caller is not None and caller.role == "admin":
            request.environ[SHOW] = True
        return response
