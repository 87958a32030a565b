"""What the SCPI simulators share: header normalisation (long and short forms) and the error queue."""

from __future__ import annotations

import re
from collections import deque

# Long forms of the mnemonics the simulators know, mapped to their short forms.
_SHORT = {
    "SOURCE": "SOUR", "SENSE": "SENS", "FORMAT": "FORM", "ELEMENTS": "ELEM", "OUTPUT": "OUTP",
    "VOLTAGE": "VOLT", "CURRENT": "CURR", "PROTECTION": "PROT", "LEVEL": "LEV", "SYSTEM": "SYST",
    "ERROR": "ERR", "MEASURE": "MEAS", "FUNCTION": "FUNC", "CONFIGURE": "CONF", "ROUTE": "ROUT",
    "TEMPERATURE": "TEMP", "READING": "READ", "CHANNEL": "CHAN", "TRIGGER": "TRIG", "COUNT": "COUN",
    "RESISTANCE": "RES", "TRIPPED": "TRIP", "IMMEDIATE": "IMM", "AMPLITUDE": "AMPL", "RANGE": "RANG",
}  # fmt: skip
_OPTIONAL = {"LEV", "IMM", "AMPL"}  # [:LEVel] and friends may be left out


def split_command(command: str) -> tuple[str, str]:
    """The normalised header (``SOUR:VOLT``, ``*IDN?``) and the parameters of one SCPI command."""
    header, _, parameters = command.strip().partition(" ")
    query = header.endswith("?")
    parts = [part for part in header.rstrip("?").lstrip(":").upper().split(":") if part]
    # Numeric suffixes (SENS1, OUTP1) are channel 1 on single-channel instruments.
    parts = [_SHORT.get(re.sub(r"1$", "", part), re.sub(r"1$", "", part)) for part in parts]
    parts = [part for part in parts if part not in _OPTIONAL]
    return ":".join(parts) + ("?" if query else ""), parameters.strip()


class ErrorQueue:
    """The SCPI error queue: ``:SYST:ERR?`` pops the oldest entry, ``0,"No error"`` when empty."""

    def __init__(self, size: int = 10) -> None:
        self._queue: deque[str] = deque(maxlen=size)

    def push(self, code: int, message: str) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._queue[-1] = '-350,"Queue overflow"'
            return
        self._queue.append(f'{code:+d},"{message}"')

    def pop(self) -> str:
        return self._queue.popleft() if self._queue else '0,"No error"'

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
