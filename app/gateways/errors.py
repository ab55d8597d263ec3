"""How a gateway says a call to another system failed: try again later, or never."""

from __future__ import annotations


class GatewayError(Exception):
    """A call to an outside system failed. The message must not contain PHI."""


class TransientError(GatewayError):
    """Worth retrying: connection refused, timeout, HTTP 5xx/429, DIMSE 0xA7xx, association
    rejected transiently."""


class PermanentError(GatewayError):
    """Retrying cannot help: HTTP 4xx, DIMSE 0xA9xx/0xCxxx, a rejected resource."""
