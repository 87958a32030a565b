"""The censored Weibull fit and its ranks, checked against independent libraries (test dependencies only):
surpyval for right-, interval- and left-censored data, the ``reliability`` package's Fit_Weibull_2P (no
interval censoring) for right-censored and complete data, and its plotting_positions for the ranks.

Agreement: beta and eta within 1 %, the Fisher-matrix bounds within 5 %. surpyval reports the covariance of
its MLE (``hess_inv``): the bounds are formed from it as every tool does, exp(+/- z * se / estimate).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.stats

from edge_daq.reliability.life import LifeRow
from edge_daq.reliability.weibull import FitError, WeibullFit, fit_weibull, fitted_y, median_ranks, weibull_y

CONFIDENCE = 0.9
Z = float(scipy.stats.norm.ppf(0.5 + CONFIDENCE / 2))


def life_row(
    index: int,
    status: str,
    *,
    last_good: float | None = None,
    failed: float | None = None,
    censored: float | None = None,
    mode: str = "",
) -> LifeRow:
    return LifeRow(
        dut=f"U{index:04d}", instrument="board1", socket=index, serial=f"U{index:04d}", lot="", sublot="",
        wafer="", x="", y="", date_code="", board="", slot="", bin="",
        test_id="T1", test_kind="HTOL", status=status,  # type: ignore[arg-type]
        last_good_h=last_good, failed_h=failed, detected_h=failed, censored_h=censored,
        mode=mode or ("open" if status == "failed" else ""), rule="", limit="", value=None,
    )  # fmt: skip


@dataclass
class DataSet:
    """A seeded life table and the same data in surpyval's xl/xr form."""

    name: str
    rows: list[LifeRow]
    xl: list[float]
    xr: list[float]
    interval: bool  # has interval- or left-censored failures (no Fit_Weibull_2P comparison)


def right_censored(seed: int, n: int, beta: float, eta: float, end: float, removals: int = 0) -> DataSet:
    """Time-terminated test with exact failure times; ``removals`` DUTs pulled out at random times."""
    rng = np.random.default_rng(seed)
    life = eta * rng.weibull(beta, n)
    removed = rng.uniform(0.1 * end, end, n)
    rows, xl, xr = [], [], []
    for index, (t, out) in enumerate(zip(life, removed, strict=True)):
        stop = out if index < removals else end
        if t < stop:
            rows.append(life_row(index, "failed", last_good=float(t), failed=float(t)))
            xl.append(float(t))
            xr.append(float(t))
        else:
            status = "removed" if index < removals else "survived"
            rows.append(life_row(index, status, censored=float(stop)))
            xl.append(float(stop))
            xr.append(math.inf)
    return DataSet(f"right-censored seed {seed}", rows, xl, xr, interval=False)


def inspected(seed: int, n: int, beta: float, eta: float, inspections: Sequence[float]) -> DataSet:
    """Failures known only between inspections (polls or readouts); the first interval is (0, t1]."""
    rng = np.random.default_rng(seed)
    rows, xl, xr = [], [], []
    for index, t in enumerate(eta * rng.weibull(beta, n)):
        after = next((k for k, at in enumerate(inspections) if at >= t), None)
        if after is None:
            rows.append(life_row(index, "survived", censored=inspections[-1]))
            xl.append(inspections[-1])
            xr.append(math.inf)
            continue
        low = inspections[after - 1] if after > 0 else None
        rows.append(life_row(index, "failed", last_good=low, failed=inspections[after]))
        xl.append(low or 0.0)
        xr.append(inspections[after])
    return DataSet(f"inspected seed {seed}", rows, xl, xr, interval=True)


DATA_SETS = [
    right_censored(11, 40, beta=2.0, eta=1000.0, end=900.0),
    right_censored(12, 60, beta=0.8, eta=5000.0, end=2000.0, removals=8),
    right_censored(13, 25, beta=3.0, eta=100.0, end=1e9),  # complete: every DUT fails
    inspected(14, 50, beta=1.5, eta=500.0, inspections=[10.0 * k for k in range(1, 61)]),
    inspected(15, 80, beta=0.7, eta=3000.0, inspections=[24.0, 168.0, 500.0, 1000.0, 2000.0]),
    inspected(16, 45, beta=2.5, eta=300.0, inspections=[50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0]),
]


@contextmanager
def quiet() -> Iterator[None]:
    """The independent libraries warn about their own internals (numpy/autograd deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def surpyval_fit(data: DataSet) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    from surpyval import Weibull  # type: ignore[attr-defined]

    with quiet():
        model = Weibull.fit(xl=np.array(data.xl), xr=np.array(data.xr))
    eta, beta = (float(value) for value in model.params)
    se_eta, se_beta = (math.sqrt(float(model.hess_inv[i, i])) for i in range(2))
    beta_bounds = (beta * math.exp(-Z * se_beta / beta), beta * math.exp(Z * se_beta / beta))
    eta_bounds = (eta * math.exp(-Z * se_eta / eta), eta * math.exp(Z * se_eta / eta))
    return beta, eta, beta_bounds, eta_bounds


def reliability_fit(rows: Sequence[LifeRow]) -> Any:
    from reliability.Fitters import Fit_Weibull_2P

    failures = [row.failed_h for row in rows if row.status == "failed"]
    suspensions = [row.censored_h for row in rows if row.status != "failed"]
    with quiet():
        return Fit_Weibull_2P(
            failures=failures, right_censored=suspensions or None, CI=CONFIDENCE,
            show_probability_plot=False, print_results=False,
        )  # fmt: skip


def assert_close(ours: float, theirs: float, tolerance: float, what: str) -> None:
    assert abs(ours / theirs - 1) <= tolerance, f"{what}: ours {ours:.6g}, theirs {theirs:.6g}"


def assert_agrees(fit: WeibullFit, beta: float, eta: float, beta_b: Sequence[float], eta_b: Sequence[float]) -> None:
    assert_close(fit.beta, beta, 0.01, "beta")
    assert_close(fit.eta, eta, 0.01, "eta")
    for ours, theirs in zip((*fit.beta_bounds, *fit.eta_bounds), (*beta_b, *eta_b), strict=True):
        assert_close(ours, theirs, 0.05, "bound")


@pytest.mark.parametrize("data", DATA_SETS, ids=lambda data: data.name)
def test_the_censored_fit_agrees_with_surpyval(data: DataSet) -> None:
    fit = fit_weibull(data.rows, confidence=CONFIDENCE)
    assert fit.failures + fit.censored == len(data.rows)
    assert_agrees(fit, *surpyval_fit(data))


@pytest.mark.parametrize("data", [data for data in DATA_SETS if not data.interval], ids=lambda data: data.name)
def test_the_right_censored_fit_agrees_with_reliability(data: DataSet) -> None:
    fit = fit_weibull(data.rows, confidence=CONFIDENCE)
    theirs = reliability_fit(data.rows)
    assert_agrees(
        fit, theirs.beta, theirs.alpha, (theirs.beta_lower, theirs.beta_upper), (theirs.alpha_lower, theirs.alpha_upper)
    )


def test_the_data_sets_are_censored_as_named() -> None:
    statuses = [{row.status for row in data.rows} for data in DATA_SETS]
    assert statuses[0] == {"failed", "survived"}
    assert statuses[1] == {"failed", "survived", "removed"}
    assert statuses[2] == {"failed"}
    failed = [[row for row in data.rows if row.status == "failed"] for data in DATA_SETS[3:]]
    assert all(any(row.last_good_h for row in rows) for rows in failed)  # interval-censored
    assert any(row.last_good_h is None for row in failed[1])  # left-censored: (0, 24 h]


@pytest.mark.parametrize("data", [data for data in DATA_SETS if not data.interval], ids=lambda data: data.name)
def test_the_ranks_are_johnsons_with_bernards_approximation_as_reliability_computes_them(data: DataSet) -> None:
    from reliability.Probability_plotting import plotting_positions

    failures = [row.failed_h for row in data.rows if row.status == "failed"]
    suspensions = [row.censored_h for row in data.rows if row.status != "failed"]
    with quiet():
        times, unreliability = plotting_positions(failures=failures, right_censored=suspensions or None, a=0.3)
    theirs = sorted(zip(times, unreliability, strict=True))
    ours = median_ranks(data.rows)
    assert [point.hours for point in ours] == pytest.approx([t for t, _ in theirs])
    assert [point.unreliability for point in ours] == pytest.approx([f for _, f in theirs], rel=1e-9)


def test_on_a_complete_sample_of_50_the_fitted_line_passes_within_the_plotted_points() -> None:
    """Weibull(beta=2, eta=1000 h), n = 50: every point's 90 % rank band (the beta distribution of its order
    statistic) contains the line, the line has points on both sides all along, and it fits them closely."""
    data = right_censored(2026, 50, beta=2.0, eta=1000.0, end=1e9)
    fit = fit_weibull(data.rows, confidence=CONFIDENCE)
    points = median_ranks(data.rows)
    assert len(points) == 50
    residuals, gaps = [], []
    for order, point in enumerate(points, start=1):
        line = fitted_y(fit, point.hours)
        low, high = (weibull_y(float(q)) for q in scipy.stats.beta.ppf([0.05, 0.95], order, 50 - order + 1))
        assert low <= line <= high, (order, point, fit)
        residuals.append(weibull_y(point.unreliability) - line)
        gaps.append(abs(point.unreliability - (1 - math.exp(-math.exp(line)))))
    for third in (residuals[:17], residuals[17:34], residuals[34:]):
        assert min(third) < 0 < max(third)  # points on both sides of the line in each third of the range
    assert max(gaps) < 0.1  # in probability, everywhere (a Kolmogorov-Smirnov distance)


def test_a_fit_is_refused_in_plain_words_when_the_data_cannot_carry_it() -> None:
    survivors = [life_row(i, "survived", censored=100.0) for i in range(5)]
    with pytest.raises(FitError, match=r"at least 2 failures.*has 0"):
        fit_weibull(survivors)
    with pytest.raises(FitError, match=r"at least 2 failures.*has 1"):
        fit_weibull([*survivors, life_row(9, "failed", last_good=10.0, failed=12.0)])
    same = [life_row(i, "failed", last_good=50.0, failed=50.0) for i in range(3)]
    with pytest.raises(FitError, match="same stress time"):
        fit_weibull(same)
    at_zero = [life_row(i, "failed", failed=0.0) for i in range(3)]
    with pytest.raises(FitError, match="after 0 stress hours"):
        fit_weibull([*at_zero, *survivors])
