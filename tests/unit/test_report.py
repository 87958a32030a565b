"""`edge-daq report` on every shape of life table (it prints what it can, says what it cannot, exits 0), its
acceleration models from the command line and the rig file, and `edge-daq life --layout` read back by
independent reliability libraries."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_daq.cli import main
from edge_daq.config.loader import shipped_profiles_folder
from edge_daq.reliability.acceleration import fit_rate
from edge_daq.reliability.enums import DutStatus, TestState
from edge_daq.reliability.failures import DutState, Failure
from edge_daq.reliability.journal import STATE_FILE
from edge_daq.reliability.life import LifeRow, life_table
from edge_daq.reliability.state import RigState, TestRun
from edge_daq.reliability.stress import StressState
from edge_daq.reliability.weibull import fit_weibull
from tests.unit.test_weibull import DATA_SETS, DataSet, quiet

RIG = "r1"


def dut(
    index: int, *, failed_h: float | None = None, last_good_h: float | None = None, removed: bool = False
) -> DutState:
    serial = f"U{index:03d}"
    state = DutState(identity={"dut": serial, "serial": serial}, instrument="board1", socket=index)
    if failed_h is not None:
        state.status = DutStatus.FAILED
        state.failure = Failure(
            rule="open", mode="open", field="i", limit="< 1", value=0.0, time_ns=0, stress_s=failed_h * 3600,
            detected_ns=0, detected_stress_s=failed_h * 3600, events=2, last_good_ns=None,
            last_good_stress_s=None if last_good_h is None else last_good_h * 3600, before={}, after={},
        )  # fmt: skip
    elif removed:
        state.status = DutStatus.REMOVED
        state.removed_stress_s = 10 * 3600
    return state


def save(state_dir: Path, duts: Sequence[DutState], stress_h: float, *, cycles: int = 0, test: bool = True) -> None:
    state = RigState(
        rig=RIG,
        test=TestRun(id="T1", kind="HTOL", state=TestState.RUNNING, started_ns=1) if test else None,
        stress=StressState(stress_s=stress_h * 3600, cycles=cycles),
        duts={d.identity["dut"]: d for d in duts},
    )
    (state_dir / RIG).mkdir(parents=True, exist_ok=True)
    (state_dir / RIG / STATE_FILE).write_text(json.dumps(state.to_json()), encoding="utf-8")


def report(capsys: pytest.CaptureFixture[str], state_dir: Path, *args: str) -> str:
    code = main(["report", RIG, "--state-dir", str(state_dir), "--plot", str(state_dir / "plot.png"), *args])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), (out, err)
    return out


def test_zero_device_hours_right_after_test_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, [dut(i) for i in range(1, 5)], stress_h=0.0)
    out = report(capsys, tmp_path, "--model", "arrhenius:ea=0.7,use_temp=55,stress_temp=125")
    assert out.startswith("rig r1, test T1 (HTOL): 4 DUTs, 0 failed, 4 survived, 0 removed; 0.0 device-hours")
    assert "acceleration: Arrhenius AF = 77.65 (Ea 0.7 eV, 55 -> 125 degC)" in out
    assert out.endswith("no device-hours yet: no failure rate, no Weibull fit\n")
    assert fit_rate(0, 0.0, 0.6) is None


def test_no_test_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, [dut(1)], stress_h=0.0, test=False)
    assert report(capsys, tmp_path) == "rig r1: no test has started: no device-hours yet, nothing to report\n"


def test_no_failures_gives_the_chi_squared_bound_and_says_why_there_is_no_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(tmp_path, [dut(i) for i in range(1, 11)], stress_h=1000.0)
    out = report(capsys, tmp_path, "--fit-confidence", "0.6")
    # chi2(0.6; 2) / (2 * 10000 h) * 1e9 = 1.8326 / 20000 * 1e9
    assert "failure rate at 60% confidence (chi-squared): 9.163e+04 FIT at stress conditions" in out
    assert "Weibull fit not possible: a Weibull fit needs at least 2 failures after 0 stress hours, " in out
    assert "the life table has 0; no probability plot" in out
    assert not (tmp_path / "plot.png").exists()


def test_one_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, [dut(1, failed_h=100.0, last_good_h=99.5), *(dut(i) for i in range(2, 6))], stress_h=500.0)
    out = report(capsys, tmp_path)
    assert "1 failed, 4 survived" in out
    assert "left-censored" not in out
    assert "failure rate at 90% confidence (chi-squared): " in out
    assert "the life table has 1; no probability plot" in out


def test_all_failed_fits_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hours = [50.0, 80.0, 120.0, 130.0, 200.0, 260.0]
    save(tmp_path, [dut(i, failed_h=h, last_good_h=h - 0.5) for i, h in enumerate(hours, 1)], stress_h=300.0)
    out = report(capsys, tmp_path)
    assert "6 failed, 0 survived" in out
    assert "left-censored" not in out  # every failure had a good poll before it
    assert "Weibull (MLE, interval/right-censored): beta = " in out
    assert out.endswith(f"probability plot written to {tmp_path / 'plot.png'}\n")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failures_at_zero_hours_and_identical_times_are_said_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    duts = [dut(1, failed_h=0.0), dut(2, failed_h=5.0, last_good_h=5.0), dut(3, failed_h=5.0, last_good_h=5.0)]
    save(tmp_path, duts, stress_h=5.0)
    out = report(capsys, tmp_path)
    assert "1 failed at 0 stress hours (before any stress): in the failure rate, not in the Weibull fit" in out
    assert "left-censored" not in out
    assert "Weibull fit not possible: every failure is at the same stress time" in out


def test_acceleration_models_give_af_use_hours_and_fit_at_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2 failures in 10 DUTs over 1000 stress hours at 125 degC / 1.5 V; 24 cycles counted.
    duts = [dut(1, failed_h=300.0, last_good_h=299.0), dut(2, failed_h=700.0, last_good_h=699.0)]
    save(tmp_path, [*duts, *(dut(i) for i in range(3, 11))], stress_h=1000.0, cycles=24)
    out = report(
        capsys, tmp_path, "--fit-confidence", "0.6",
        "--model", "arrhenius:ea=0.7,use_temp=55,stress_temp=125",
        "--model", "inverse-power-law:exponent=3,use_voltage=1.2,stress_voltage=1.5",
    )  # fmt: skip
    arrhenius = math.exp(0.7 / 8.617333262e-5 * (1 / 328.15 - 1 / 398.15))
    voltage = (1.5 / 1.2) ** 3
    assert f"acceleration: Arrhenius AF = {arrhenius:.4g} (Ea 0.7 eV, 55 -> 125 degC)" in out
    assert f"acceleration: inverse power law AF = {voltage:.4g} (n 3, 1.2 -> 1.5 V)" in out
    device_hours = 1000.0 + 8 * 1000.0
    assert f"equivalent use-condition device-hours: {device_hours * arrhenius * voltage:.4g}" in out
    rate = fit_rate(2, device_hours, 0.6, arrhenius * voltage)
    assert rate is not None
    assert f"failure rate at 60% confidence (chi-squared): {rate:.4g} FIT at use conditions, 2 failures" in out
    # Coffin-Manson: the stress frequency is the counted one, 24 cycles per 1000/24 days.
    cycling = "coffin-manson:exponent=2,use_delta_t=40,stress_delta_t=165,use_cycles_per_day=2"
    out = report(capsys, tmp_path, "--model", cycling)
    assert "acceleration: Coffin-Manson AF = 17.02 (cycles to failure) " in out
    assert "(n 2, dT 40 -> 165 K, 2 -> 0.576 cycles/day)" in out
    assert "(4.901 use hours per stress hour)" in out  # 17.02 * 0.576 / 2
    # Without counted cycles and without stress_cycles_per_day, the report says what is missing.
    save(tmp_path, [*duts, *(dut(i) for i in range(3, 11))], stress_h=1000.0)
    norris_landzberg = (
        "norris-landzberg:exponent=1.9,frequency_exponent=0.333,ea=0.122,"
        "use_delta_t=40,stress_delta_t=165,use_max_temp=60,stress_max_temp=125,use_cycles_per_day=2"
    )
    out = report(capsys, tmp_path, "--model", norris_landzberg)
    assert "acceleration: not computable: Norris-Landzberg needs stress_cycles_per_day" in out
    assert "at stress conditions (no acceleration model)" in out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("arrhenius:ea=0.7,use_temp=55", "stress_temp: Field required"),
        ("peck:ea=0.7", "exponent: Field required"),
        ("eyring:ea=1", "unknown acceleration model 'eyring'"),
        ("arrhenius:ea=abc,use_temp=55,stress_temp=125", "ea: Input should be a valid number"),
        ("arrhenius:ea", "expected key=value"),
    ],
)
def test_a_bad_model_is_a_usage_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", RIG, "--state-dir", str(tmp_path), "--model", model])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def example_gateway(tmp_path: Path) -> Path:
    """The shipped example gateway and rigs, with the state folder in tmp_path."""
    config = tmp_path / "config"
    shutil.copytree(shipped_profiles_folder().parent, config)
    gateway = config / "edge-daq.yaml"
    gateway.write_text(gateway.read_text() + f"state_dir: {tmp_path / 'state'}\n")
    return gateway


def test_the_example_rig_reports_no_device_hours_before_and_right_after_test_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = example_gateway(tmp_path)
    assert main(["report", "htol-07", "-c", str(gateway)]) == 0
    assert "no device-hours yet" in capsys.readouterr().out
    state = tmp_path / "state"
    save(state, [dut(i) for i in range(1, 4)], stress_h=0.0)
    (state / RIG).rename(state / "htol-07")
    assert main(["report", "htol-07", "-c", str(gateway)]) == 0
    out = capsys.readouterr().out
    assert "acceleration: Arrhenius AF = " in out  # from the rig file's acceleration: list
    assert out.endswith("no device-hours yet: no failure rate, no Weibull fit\n")
    assert main(["report", "no-such-rig", "-c", str(gateway)]) == 1
    assert "no rig 'no-such-rig'" in capsys.readouterr().err


@pytest.mark.parametrize("data", DATA_SETS, ids=lambda data: data.name)
def test_the_life_data_export_loads_into_surpyval_and_reliability(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: DataSet
) -> None:
    import pandas
    from reliability.Convert_data import XCN_to_FR
    from reliability.Fitters import Fit_Weibull_2P
    from surpyval import Weibull  # type: ignore[attr-defined]

    from edge_daq.reliability.export import write_export

    rows = data.rows
    ours = fit_weibull(rows)
    path = tmp_path / "life.csv"
    assert write_export(rows, path, "life-data") == len(rows)
    frame = pandas.read_csv(path)
    with quiet():
        model = Weibull.fit_from_df(frame, xl_col="left_h", xr_col="right_h", n_col="n")
    assert model.params[0] == pytest.approx(ours.eta, rel=0.01)
    assert model.params[1] == pytest.approx(ours.beta, rel=0.01)
    # reliability has no interval censoring: it reads state/time (failures at their first violation).
    with quiet():
        columns = {"X": frame.time_h.tolist(), "C": frame.state.tolist(), "N": frame.n.tolist()}
        converted = XCN_to_FR(**columns, failure_code="F", censor_code="S")
        censored = converted.right_censored
        failures, suspensions = list(converted.failures), [] if censored is None else list(censored)
        expected = sorted(row.failed_h or 0.0 for row in rows if row.status == "failed")
        assert sorted(failures) == pytest.approx(expected, abs=1e-6)
        theirs = Fit_Weibull_2P(failures=failures, right_censored=suspensions or None, show_probability_plot=False,
                                print_results=False)  # fmt: skip
    if not data.interval:
        assert theirs.beta == pytest.approx(ours.beta, rel=0.01)
    # The Weibull++ layout carries the same intervals under its own headings.
    assert write_export(rows, path, "weibull++") == len(rows)
    frame = pandas.read_csv(path)
    assert list(frame.columns[:4]) == ["Number in State", "Last Inspected", "State F or S", "State End Time"]
    right = frame["State End Time"].where(frame["State F or S"] == "F", math.inf)
    with quiet():
        model = Weibull.fit(xl=frame["Last Inspected"].to_numpy(), xr=right.to_numpy())
    assert model.params[1] == pytest.approx(ours.beta, rel=0.01)


def test_edge_daq_life_writes_the_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, [dut(1, failed_h=12.5, last_good_h=12.0), dut(2), dut(3, removed=True)], stress_h=100.0)
    out = tmp_path / "life-data.csv"
    assert main(["life", RIG, "--state-dir", str(tmp_path), "--layout", "life-data", "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"3 DUTs as life-data life data (F/S, stress hours) written to {out}\n"
    assert out.read_text().splitlines() == [
        "dut,state,time_h,left_h,right_h,n,mode",
        "U001,F,12.5,12.0,12.5,1,open",
        "U002,S,100.0,100.0,inf,1,",
        "U003,S,10.0,10.0,inf,1,",
    ]
    assert main(["life", RIG, "--state-dir", str(tmp_path), "--layout", "weibull++", "-o", str(out)]) == 0
    assert out.read_text().splitlines()[:2] == [
        "Number in State,Last Inspected,State F or S,State End Time,Subset ID 1,Subset ID 2",
        "1,12.0,F,12.5,U001,open",
    ]
    assert [row.status for row in life_table_of(tmp_path)] == ["failed", "survived", "removed"]


def life_table_of(state_dir: Path) -> list[LifeRow]:
    from edge_daq.reliability.state import load_state

    state = load_state(state_dir, RIG)
    assert state is not None
    return list(life_table(state))


def test_check_points_at_a_bad_acceleration_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = tmp_path / "r1.yaml"
    rig.write_text(
        "rig: r1\nacceleration:\n"
        "  - {model: peck, ea: 0.79, exponent: 2.66, use_temp: 30, stress_temp: 85, use_rh: 60}\n"
        "  - {model: arrhenus, ea: 1}\n"
        "  - {model: arrhenius, ea: 0.7, use_temp: 55, stress_temp: 125, extra: 1}\n"
        "  - {model: inverse-power-law, exponent: 3, use_voltage: 0, stress_voltage: 1.5}\n"
    )
    assert main(["check", str(rig)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith(" files checked, 4 problems")  # the rig file and the shipped profiles
    assert lines[:-1] == [
        f"{rig}:3:5: missing key 'stress_rh'",
        f"{rig}:4:13: unknown model 'arrhenus' (did you mean 'arrhenius'?); known: arrhenius, peck, "
        "inverse-power-law, coffin-manson, norris-landzberg",
        f"{rig}:5:65: unknown key 'extra'",
        f"{rig}:6:58: must be greater than 0, got 0",
    ]


def test_failures_without_a_good_poll_are_said_to_be_left_censored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    duts = [dut(1, failed_h=0.1), dut(2, failed_h=0.1), dut(3, failed_h=30.0, last_good_h=29.0), dut(4)]
    save(tmp_path, duts, stress_h=100.0)
    out = report(capsys, tmp_path)
    assert "2 failed with no good poll under stress before: left-censored, (0, first violation] in the fit" in out
    assert "Weibull (MLE, interval/right-censored): beta = " in out
