"""Line-protocol encoding of records: the fast path for records of floats against the general one."""

from __future__ import annotations

import math
import random

import pytest

from edge_daq import record as record_module
from edge_daq.record import FieldValue, Record, Series, encode_fields, encode_lines, to_line


def reference(fields: dict[str, FieldValue]) -> str:
    """The field set written out one field at a time, from the line protocol's rules."""
    parts = []
    for key, value in fields.items():
        name = key.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
        name = name.replace("\n", "\\n")
        if isinstance(value, bool):
            parts.append(f"{name}={'true' if value else 'false'}")
        elif isinstance(value, int):
            parts.append(f"{name}={value}i")
        elif isinstance(value, float):
            if math.isfinite(value):
                parts.append(f"{name}={value!r}")
        else:
            parts.append(f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ",".join(parts)


@pytest.mark.parametrize(
    "fields",
    [
        {"t": 25.0, "rh": 85.5},
        {"100%": 1.5, "a,b": -0.1, "x=y": 1e-300, "sp ace": 3.4e38, "%r%s": 2.0, "%%": 0.0, "new\nline": -0.0},
        {"only": 123456789.123},
        {"big": 1.7e308, "bigger": 1.7e308},  # finite values whose sum overflows: the general loop decides
        {"nan": math.nan, "ok": 1.0, "inf": math.inf},
        {"i": 3, "b": True, "s": 'say "hi"\\', "f": 0.1},
    ],
    ids=["plain", "names to escape", "one field", "sum overflows", "non-finite", "mixed types"],
)
def test_fields_encode_as_the_rules_say(fields: dict[str, FieldValue]) -> None:
    for _ in range(2):  # the second time through, the template cached by the first
        assert encode_fields(fields) == reference(fields)


def test_random_float_records_match_the_general_encoding() -> None:
    rng = random.Random(7)
    for _ in range(200):
        names = [f"p{rng.randrange(50)}%{rng.randrange(3)}" for _ in range(rng.randrange(1, 40))]
        fields: dict[str, FieldValue] = {name: rng.uniform(-1e6, 1e6) / rng.choice((1, 10, 1000)) for name in names}
        assert encode_fields(fields) == reference(fields)


def test_the_template_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_module, "_FLOAT_TEMPLATES", {})
    monkeypatch.setattr(record_module, "_FLOAT_TEMPLATE_LIMIT", 3)
    for n in range(10):
        assert encode_fields({f"k{n}": 1.5}) == f"k{n}=1.5"
    assert len(record_module._FLOAT_TEMPLATES) == 3


def test_a_line_has_the_series_prefix_fields_and_time() -> None:
    series = Series("chamber", {"rig": "htol 07", "lot": "L2611,03", "empty": ""})
    line = to_line(Record(series, {"temp_pv": 125.0, "ok": True}, 1_700_000_000_000_000_000))
    assert line == "chamber,lot=L2611\\,03,rig=htol\\ 07 temp_pv=125.0,ok=true 1700000000000000000"
    nothing = Record(series, {"nan": math.nan}, 1)
    assert to_line(nothing) is None
    assert encode_lines([nothing, Record(series, {"v": 1}, 2)]) == [b"chamber,lot=L2611\\,03,rig=htol\\ 07 v=1i 2\n"]
