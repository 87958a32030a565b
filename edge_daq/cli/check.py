"""``edge-daq check FILE...``: load configuration files exactly as the daemon would and list every problem.

Output, one problem per line and a summary, like a compiler's::

    rigs.d/htol-07.yaml:14:7: unknown key 'adress' (did you mean 'address'?)
    3 files checked, 1 problem

Every line is positioned and no traceback is ever printed: an unexpected exception is reported as
``path:1:1: internal error: ...`` and the exit status is 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from edge_daq.config.loader import CheckResult, check_config, internal_error


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _printable(line: str) -> str:
    # A file name that is not valid UTF-8 comes back from the OS with surrogate escapes, which no terminal can
    # print: its bytes are shown as U+FFFD instead of raising UnicodeEncodeError.
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run_check(paths: list[Path], out: TextIO) -> int:
    """Print each issue as ``path:line:column: message`` and a summary; 1 if there was any issue, else 0."""
    try:
        result = check_config(paths)
    except Exception as error:  # check_config reports its own bugs per file; this is the last net
        result = CheckResult([internal_error(paths[0] if paths else Path("-"), error)], list(paths))
    problems = _count(len(result.issues), "problem") if result.issues else "no problems"
    try:
        for issue in result.issues:
            print(_printable(str(issue)), file=out)
        print(f"{_count(len(result.files), 'file')} checked, {problems}", file=out)
        out.flush()
    except BrokenPipeError:  # `edge-daq check ... | head`: the reader has what it wanted
        if out is sys.stdout:  # and the interpreter's own flush at exit must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if result.issues else 0
