"""The small error tree of edge-daq.

Library exceptions (pyserial, aiohttp, influxdb-client, PyYAML, pydantic) are mapped into these at the
boundary of the module that calls the library, and raised ``from`` the original, so the rest of the daemon
only ever handles these classes.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeDaqError(Exception):
    """Base of every error edge-daq raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, located at the YAML node that causes it."""

    path: str
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(EdgeDaqError):
    """The configuration cannot be used; carries every issue found, not only the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class DriverError(EdgeDaqError):
    """An instrument could not be read."""


class DriverTimeoutError(DriverError):
    """The instrument did not answer in time."""


class DriverConnectionError(DriverError):
    """The link to the instrument (socket, serial port) is down or could not be opened."""


class DriverProtocolError(DriverError):
    """The reply was garbled or did not match the request."""


class DeviceError(DriverError):
    """The instrument answered with an error (a Modbus exception, a SCPI error)."""


class SinkError(EdgeDaqError):
    """An output could not deliver a batch."""


class RetriableSinkError(SinkError):
    """Delivery may succeed later: keep the batch and retry after a backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalSinkError(SinkError):
    """The output is misconfigured (credentials, missing bucket): keep the data, alert, back off long."""
