"""InfluxDB output: ``api: v2`` through influxdb-client's async API, ``api: v1`` through ``/write``.

Sample (gateway file)::

    outputs:
      influxdb:
        url: http://127.0.0.1:8086
        api: v2
        org: lab
        bucket: reliability
        token: ${INFLUX_TOKEN}       # or token_file: /run/credentials/edge-daq.service/influx-token
        batch_size: 5000
        flush_interval: 1s
        timeout: 10s
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from edge_daq.config.units import Duration
from edge_daq.sinks.base import OutputConfig


class InfluxDBOutputConfig(OutputConfig):
    url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://")
    api: Literal["v1", "v2"] = "v2"
    # v2
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    # v1
    database: str | None = None
    retention_policy: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: Path | None = None
    create_database: bool = True
    # both
    timeout: Duration = 10.0
    gzip: bool = True
    verify_tls: bool = True
    max_backoff: Duration = 300.0

    @model_validator(mode="after")
    def _check_api_keys(self) -> InfluxDBOutputConfig:
        if self.api == "v2":
            missing = [key for key in ("org", "bucket") if getattr(self, key) is None]
            if self.token is None and self.token_file is None:
                missing.append("token (or token_file)")
            if missing:
                raise ValueError(f"api v2 needs {', '.join(missing)}")
            if self.token is not None and self.token_file is not None:
                raise ValueError("give token or token_file, not both")
        else:
            if self.database is None:
                raise ValueError("api v1 needs database")
            if self.password is not None and self.password_file is not None:
                raise ValueError("give password or password_file, not both")
        return self
