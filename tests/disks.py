"""A disk that really fills up, for the spool's full-disk tests in both suites (it starts no server)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` on the new folder ``folder``, for a disk that really fills up (ENOSPC).

    Mounting needs root (or CAP_SYS_ADMIN): a developer's unprivileged run skips the test; with ``CI`` set (as CI
    services set it) it fails instead, so the full-disk cases are never skipped unseen where they are judged.
    """
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI runs as root and must run the full-disk cases)")
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
