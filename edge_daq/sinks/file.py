"""File output: rotated line-protocol files that ``influx write`` (2.x) or ``influx -import`` (1.x) can load.

The embedded default when no output is configured. Sample (gateway file)::

    outputs:
      file:
        dir: /var/lib/edge-daq/archive
        rotate_bytes: 64MiB
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge_daq.config.units import Duration, Size
from edge_daq.sinks.base import OutputConfig


class FileOutputConfig(OutputConfig):
    dir: Path = Path("/var/lib/edge-daq/archive")
    rotate_bytes: Size = Field(default=64 << 20, ge=4096)
    keep_files: int | None = Field(default=None, ge=1, description="oldest rotated files beyond this are deleted")
    flush_interval: Duration = 1.0
