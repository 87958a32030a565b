"""``edge-daq check FILE...``: load configuration files exactly as the daemon would and list every problem.

Output, one problem per line and a summary, like a compiler's::

    rigs.d/htol-07.yaml:14:7: unknown key 'adress' (did you mean 'address'?)
    3 files checked, 1 problem
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from edge_daq.config.loader import check_config


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def run_check(paths: list[Path], out: TextIO) -> int:
    """Print each issue as ``path:line:column: message`` and a summary; 1 if there was any issue, else 0."""
    result = check_config(paths)
    for issue in result.issues:
        print(issue, file=out)
    problems = _count(len(result.issues), "problem") if result.issues else "no problems"
    print(f"{_count(len(result.files), 'file')} checked, {problems}", file=out)
    return 1 if result.issues else 0
