"""Seeded mutants of the shipped configuration files through ``edge-daq check``: no traceback, no hang, and every
message positioned (issue 13: 60 of 1,300 mutants printed a traceback before the loader bounded its input).

Each mutant replaces one shipped file (gateway, rig, example or profile) in a copy of ``config/`` and is checked
together with the gateway that includes it, in process through :func:`edge_daq.cli.check.run_check` (what
``edge-daq check`` runs) for speed, and a few as a real ``edge-daq check`` process.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import resource
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_daq.cli.check import run_check
from edge_daq.config import loader

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config"
# Each mutated file, relative to config/, with the gateway file that includes it.
TARGETS = [
    *[
        (path, "edge-daq.yaml")
        for path in ["edge-daq.yaml", *sorted(f"rigs.d/{p.name}" for p in (SHIPPED / "rigs.d").glob("*.yaml"))]
    ],
    *[(f"profiles/{p.name}", "edge-daq.yaml") for p in sorted((SHIPPED / "profiles").glob("*.yaml"))],
    *[(f"examples/{p.name}", "examples/serial-lab.yaml") for p in sorted((SHIPPED / "examples").glob("*.yaml"))],
    *[
        (f"examples/rigs.d/{p.name}", "examples/serial-lab.yaml")
        for p in sorted((SHIPPED / "examples" / "rigs.d").glob("*.yaml"))
    ],
]
HANG_SECONDS = 5.0
CHILD_MEMORY = 2 << 30  # bytes of address space for the process that checks the mutants
POSITIONED = re.compile(r"^(?P<path>[^\n]+?):(?P<line>[1-9]\d*):(?P<column>[1-9]\d*): (?P<message>[^\n]+)$")
SUMMARY = re.compile(r"^\d+ files? checked, (no problems|\d+ problems?)$")

DURATION_KEYS = ("interval", "timeout", "flush_interval", "max_backoff", "keepalive", "fsync_interval", "dwell")
SIZE_KEYS = ("rotate_bytes", "spool_max_bytes", "spool_min_free", "spool_segment_bytes")
PATH_KEYS = ("dir", "spool_dir", "state_dir", "port", "token_file", "password_file", "rigs", "profiles", "duts_csv")
BAD_NUMBERS = [".nan", ".NaN", ".inf", "-.inf", "0", "-1", "-0.5", "1e400", str(2**64), "9" * 4301, "0ms", "1e-9"]
BAD_DURATIONS = [*BAD_NUMBERS, "9" * 400 + "d", "0.0000001s", "-5s", "1e308h", "NaNs", "2d", "5h"]
BAD_SIZES = [*BAD_NUMBERS, "9" * 400 + "TiB", "2PiB", "1.5e3", "-1KiB", "0B"]
BAD_PATHS = ['"/var/\\0lib"', '"\\0"', "/" + "n" * 256, "/a" * 2100, '"\\ud800"', "''", "/dev/zero"]
HUGE_NUMBERS = ["9" * 4301, "9" * 5000, "-" + "9" * 4400, "1" + "0" * 400, str(2**64), "0x" + "f" * 5000, "1e999"]
CONTROL_CHARACTERS = [chr(code) for code in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0x85, 0x9B]]

Mutation = Callable[[random.Random, str], str]


def _value_spans(text: str) -> list[tuple[int, int]]:
    """Where the values of ``key: value`` lines are (start, end offsets)."""
    return [
        (m.start(1), m.end(1))
        for m in re.finditer(r"^[ \t-]*[A-Za-z_][\w.-]*:[ \t]+([^#\n]*?)[ \t]*(?:#.*)?$", text, re.M)
    ]


def _replace_value(rng: random.Random, text: str, keys: tuple[str, ...], values: list[str]) -> str | None:
    spans = [
        (m.start(2), m.end(2)) for m in re.finditer(rf"(?:^|[{{,\s])({'|'.join(keys)}):[ \t]*([^,}}#\n]*)", text, re.M)
    ]
    if not spans:
        return None
    start, end = rng.choice(spans)
    return text[:start] + rng.choice(values) + text[end:]


def byte_flips(rng: random.Random, text: str) -> str:
    data = bytearray(text.encode("utf-8", "surrogateescape"))
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data.decode("utf-8", "surrogateescape")  # written back as the same bytes


def control_character(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text))
    return text[:at] + rng.choice(CONTROL_CHARACTERS) + text[at:]


def huge_number(rng: random.Random, text: str) -> str:
    numbers = [(m.start(), m.end()) for m in re.finditer(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", text)]
    if not numbers:
        return control_character(rng, text)
    start, end = rng.choice(numbers)
    return text[:start] + rng.choice(HUGE_NUMBERS) + text[end:]


def deep_nesting(rng: random.Random, text: str) -> str:
    depth = rng.choice([63, 64, 65, 100, 1000, 5000])
    nest = rng.choice(["[" * depth + "]" * depth, "{a: " * depth + "1" + "}" * depth, "[" * depth])
    spans = _value_spans(text)
    if not spans:
        return text + f"\nx: {nest}\n"
    start, end = rng.choice(spans)
    return text[:start] + nest + text[end:]


def block_nesting(rng: random.Random, text: str) -> str:
    depth = rng.choice([60, 70, 300])
    return text + "\nnested:\n" + "".join(f"{' ' * (index + 1)}- \n" for index in range(depth))


def bad_duration(rng: random.Random, text: str) -> str:
    mutated = _replace_value(rng, text, DURATION_KEYS, BAD_DURATIONS)
    return mutated if mutated is not None else text + f"\ninterval: {rng.choice(BAD_DURATIONS)}\n"


def bad_size(rng: random.Random, text: str) -> str:
    return _replace_value(rng, text, SIZE_KEYS, BAD_SIZES) or bad_duration(rng, text)


def bad_path(rng: random.Random, text: str) -> str:
    mutated = _replace_value(rng, text, PATH_KEYS, BAD_PATHS)
    return mutated if mutated is not None else text + f"\nstate_dir: {rng.choice(BAD_PATHS)}\n"


def long_string(rng: random.Random, text: str) -> str:
    spans = _value_spans(text) or [(len(text), len(text))]
    start, end = rng.choice(spans)
    return text[:start] + rng.choice("xy/.-") * rng.choice([256, 300, 5000, 200_000]) + text[end:]


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True)
    index = rng.randrange(len(lines))
    return "".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])


def truncation(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text))]


def alias_bomb(rng: random.Random, text: str) -> str:
    width, levels = rng.choice([(10, 9), (3, 40), (1, 200)])
    lines = ["bomb0: &b0 [x]"] + [
        f"bomb{level}: &b{level} [{', '.join([f'*b{level - 1}'] * width)}]" for level in range(1, levels)
    ]
    return text + "\n" + "\n".join(lines) + "\n"


MUTATIONS: list[Mutation] = [
    byte_flips,
    control_character,
    huge_number,
    deep_nesting,
    block_nesting,
    bad_duration,
    bad_size,
    bad_path,
    long_string,
    duplicate_line,
    truncation,
    alias_bomb,
]


@dataclass
class Mutant:
    seed: int
    target: str
    gateway: str
    mutations: list[str]
    content: bytes


def mutant(seed: int, originals: dict[str, str]) -> Mutant:
    rng = random.Random(seed)
    target, gateway = rng.choice(TARGETS)
    text = originals[target]
    applied = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        text = mutation(rng, text or "\n")  # a truncation may have left nothing
        applied.append(mutation.__name__)
    return Mutant(seed, target, gateway, applied, text.encode("utf-8", "surrogateescape"))


@dataclass
class Figures:
    mutants: int = 0
    tracebacks: int = 0
    hangs: int = 0
    unpositioned: int = 0
    internal_errors: int = 0
    messages: int = 0
    refused: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)

    def judge(self, item: Mutant, output: str, seconds: float, *, raised: str | None) -> None:
        self.mutants += 1
        self.slowest = max(self.slowest, seconds)
        where = f"seed {item.seed} ({item.target}: {', '.join(item.mutations)})"
        lines = output.splitlines()
        if raised is not None or "Traceback" in output:
            self.tracebacks += 1
            self.failures.append(f"{where}: traceback {raised}")
        if seconds > HANG_SECONDS:
            self.hangs += 1
            self.failures.append(f"{where}: {seconds:.1f} s")
        if not lines or not SUMMARY.match(lines[-1]):
            self.unpositioned += 1
            self.failures.append(f"{where}: no summary line: {output[-200:]!r}")
            return
        for line in lines[:-1]:
            self.messages += 1
            if not POSITIONED.match(line):
                self.unpositioned += 1
                self.failures.append(f"{where}: unpositioned: {line[:200]!r}")
            elif ": internal error: " in line:
                self.internal_errors += 1
                self.failures.append(f"{where}: {line[:300]}")
        self.refused += len(lines) > 1

    def __str__(self) -> str:
        return (
            f"{self.mutants} mutants: {self.tracebacks} tracebacks, {self.hangs} hangs over {HANG_SECONDS:g} s, "
            f"{self.unpositioned} unpositioned messages, {self.internal_errors} internal errors; "
            f"{self.refused} refused with {self.messages} positioned messages; slowest {self.slowest:.2f} s"
        )


def _child(copy: Path, first: int, last: int) -> None:
    """Check mutants ``first`` to ``last - 1`` in this process, one JSON line each (the parent keeps the clock:
    a hang inside C code, a regex or json.dumps, cannot be interrupted from within)."""
    # A regression that reads /dev/zero would take the machine's memory within the 10 s the parent waits.
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    loader.shipped_profiles_folder = lambda: copy / "profiles"  # the mutated profiles are the shipped ones here
    originals = {target: (SHIPPED / target).read_text(encoding="utf-8") for target, _ in TARGETS}
    for seed in range(first, last):
        item = mutant(seed, originals)
        path = copy / item.target
        path.write_bytes(item.content)
        out = io.StringIO()
        raised = None
        started = time.perf_counter()
        try:
            if run_check([copy / item.gateway, path], out) not in (0, 1):
                raised = "an exit status other than 0 or 1"
        except BaseException as error:  # every escape is a finding, reported to the parent
            raised = repr(error)[:300]
        seconds = time.perf_counter() - started
        path.write_text(originals[item.target], encoding="utf-8")
        print(json.dumps({"seed": seed, "seconds": seconds, "output": out.getvalue(), "raised": raised}), flush=True)


def fuzz(tmp_path: Path, seeds: range) -> Figures:
    """Run the mutants in a child process, restarted after the one that hung or killed it."""
    copy = tmp_path / "config"
    shutil.copytree(SHIPPED, copy)
    originals = {target: (SHIPPED / target).read_text(encoding="utf-8") for target, _ in TARGETS}
    figures = Figures()
    next_seed = seeds.start
    while next_seed < seeds.stop:
        command = [sys.executable, __file__, str(copy), str(next_seed), str(seeds.stop)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO) as child:
            assert child.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(child.stdout, selectors.EVENT_READ)
                timeout = 2 * HANG_SECONDS + 20  # the first line also waits for the interpreter and the imports
                while next_seed < seeds.stop and selector.select(timeout=timeout):
                    timeout = 2 * HANG_SECONDS
                    line = child.stdout.readline()
                    if not line:
                        break  # the child died (a crash in C): the seed it was on is a finding
                    report = json.loads(line)
                    item = mutant(report["seed"], originals)
                    figures.judge(item, report["output"], report["seconds"], raised=report["raised"])
                    next_seed = report["seed"] + 1
            child.kill()
        if next_seed < seeds.stop:  # this one hung or ended the child
            item = mutant(next_seed, originals)
            figures.mutants += 1
            figures.hangs += 1
            figures.failures.append(f"seed {next_seed} ({item.target}: {', '.join(item.mutations)}): hung or crashed")
            for target, _ in TARGETS:
                (copy / target).write_text(originals[target], encoding="utf-8")
            next_seed += 1
    return figures


def test_shipped_files_pass_unmutated() -> None:
    out = io.StringIO()
    assert run_check([SHIPPED / "edge-daq.yaml", SHIPPED / "examples" / "serial-lab.yaml"], out) == 0, out.getvalue()


def test_a_thousand_mutants_never_crash_hang_or_print_an_unpositioned_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    figures = fuzz(tmp_path, range(1_000))
    with capsys.disabled():
        print(f"\nconfig fuzz (seeds 0-999): {figures}; {time.perf_counter() - started:.1f} s in all")
    assert figures.mutants == 1_000
    # The mutations do reach the checks (887 of 1000 since the shipped files begin with a schema comment line,
    # which a mutation may hit harmlessly; 900+ before).
    assert figures.refused > 850
    assert not figures.failures, "\n".join(figures.failures[:20])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_thousands_more_mutants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 500 in CI (15 s on this machine; the suite has to stay under 15 minutes on CI's), 1,500 mutants in all
    # with the test above; EDGE_DAQ_FUZZ_MUTANTS=10000 by hand.
    count = int(os.environ.get("EDGE_DAQ_FUZZ_MUTANTS", "500"))
    started = time.perf_counter()
    figures = fuzz(tmp_path, range(1_000, 1_000 + count))
    with capsys.disabled():
        print(f"\nconfig fuzz (seeds 1000-{999 + count}): {figures}; {time.perf_counter() - started:.1f} s in all")
    assert figures.mutants == count
    assert not figures.failures, "\n".join(figures.failures[:20])


@pytest.mark.parametrize("seed", [3, 17, 42, 101, 777])
def test_mutants_through_the_real_command(tmp_path: Path, seed: int) -> None:
    copy = tmp_path / "config"
    shutil.copytree(SHIPPED, copy)
    originals = {target: (SHIPPED / target).read_text(encoding="utf-8") for target, _ in TARGETS}
    item = mutant(seed, originals)
    (copy / item.target).write_bytes(item.content)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "edge_daq", "check", str(copy / item.gateway), str(copy / item.target)],
        capture_output=True,
        timeout=30,  # the interpreter's start-up included; the in-process test holds the 5 s bound
        check=False,
    )
    seconds = time.perf_counter() - started
    output = result.stdout.decode("utf-8", "replace")
    assert result.stderr == b"", result.stderr.decode("utf-8", "replace")[-2000:]
    assert result.returncode in (0, 1)
    figures = Figures()
    figures.judge(item, output, min(seconds, HANG_SECONDS), raised=None)
    assert not figures.failures, figures.failures


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
