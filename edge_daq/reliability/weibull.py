"""Weibull analysis of a life table with SciPy (the ``analysis`` extra: ``pip install edge-daq[analysis]``).

- Fit: maximum likelihood by ``scipy.stats.weibull_min.fit`` on ``scipy.stats.CensoredData`` (failures
  interval-censored between last good and detection, survivors and removed DUTs right-censored), location 0.
- Confidence bounds on beta and eta: Fisher-matrix (Wald) bounds on log(beta) and log(eta), from the observed
  information, i.e. the Hessian of the same censored log-likelihood at the optimum (what the ``reliability``
  package and most commercial tools report by default); two-sided at ``confidence``.
- Failure rate: the chi-squared upper bound, FIT = chi2(CL; 2r + 2) / (2 * device-hours * AF) * 1e9.
- Arrhenius: AF = exp(Ea / k * (1 / T_use - 1 / T_stress)), temperatures in degC, Ea in eV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_daq.reliability.life import LifeRow

BOLTZMANN_EV = 8.617333262e-5


@dataclass(frozen=True, slots=True)
class WeibullFit:
    beta: float
    eta: float
    beta_bounds: tuple[float, float]
    eta_bounds: tuple[float, float]
    confidence: float
    failures: int
    censored: int


def _import_scipy() -> Any:
    try:
        import scipy.stats
    except ImportError as error:
        raise RuntimeError("the Weibull analysis needs SciPy: pip install 'edge-daq[analysis]'") from error
    return scipy.stats


def split_life(rows: Sequence[LifeRow]) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """Exact failure times, right-censored times and (last good, failed) intervals, in stress hours."""
    exact: list[float] = []
    right: list[float] = []
    interval: list[tuple[float, float]] = []
    for row in rows:
        if row.status == "failed" and row.failed_h is not None:
            low = row.last_good_h or 0.0
            if low >= row.failed_h:
                exact.append(row.failed_h)
            else:
                interval.append((low, row.failed_h))
        elif row.censored_h is not None and row.censored_h > 0:
            right.append(row.censored_h)
    return exact, right, interval


def fit_weibull(rows: Sequence[LifeRow], *, confidence: float = 0.9) -> WeibullFit:
    import numpy as np

    stats = _import_scipy()
    exact_list, right_list, interval_list = split_life(rows)
    data = stats.CensoredData(uncensored=exact_list, right=right_list, interval=interval_list or None)
    failures = sum(1 for row in rows if row.status == "failed")
    if failures < 2:
        raise ValueError(f"a Weibull fit needs at least 2 failures, the life table has {failures}")
    beta, _, eta = stats.weibull_min.fit(data, floc=0)
    exact, right = np.asarray(exact_list, dtype=float), np.asarray(right_list, dtype=float)
    interval = np.asarray(interval_list, dtype=float) if interval_list else None

    def log_likelihood(log_beta: float, log_eta: float) -> float:
        c, scale = math.exp(log_beta), math.exp(log_eta)
        total = float(np.sum(stats.weibull_min.logpdf(exact, c, scale=scale)))
        total += float(np.sum(stats.weibull_min.logsf(right, c, scale=scale)))
        if interval is not None:
            low = stats.weibull_min.cdf(interval[:, 0], c, scale=scale)
            high = stats.weibull_min.cdf(interval[:, 1], c, scale=scale)
            total += float(np.sum(np.log(np.maximum(high - low, 1e-300))))
        return total

    point = (math.log(beta), math.log(eta))
    step = 1e-4
    hessian = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):

            def at(di: int, dj: int, i: int = i, j: int = j) -> float:
                shifted = list(point)
                shifted[i] += di * step
                shifted[j] += dj * step
                return log_likelihood(*shifted)

            hessian[i, j] = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * step * step)
    covariance = np.linalg.inv(-hessian)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    se_beta, se_eta = math.sqrt(covariance[0, 0]), math.sqrt(covariance[1, 1])
    return WeibullFit(
        beta=float(beta),
        eta=float(eta),
        beta_bounds=(beta * math.exp(-z * se_beta), beta * math.exp(z * se_beta)),
        eta_bounds=(eta * math.exp(-z * se_eta), eta * math.exp(z * se_eta)),
        confidence=confidence,
        failures=failures,
        censored=len(rows) - failures,
    )


def device_hours(rows: Sequence[LifeRow]) -> float:
    return sum((row.failed_h if row.status == "failed" else row.censored_h) or 0.0 for row in rows)


def arrhenius_factor(ea_ev: float, use_c: float, stress_c: float) -> float:
    return math.exp(ea_ev / BOLTZMANN_EV * (1 / (use_c + 273.15) - 1 / (stress_c + 273.15)))


def fit_rate(failures: int, hours: float, confidence: float, acceleration: float = 1.0) -> float:
    """Upper bound of the failure rate in FIT (failures per 1e9 device-hours) at ``confidence``."""
    stats = _import_scipy()
    return float(stats.chi2.ppf(confidence, 2 * failures + 2)) / (2 * hours * acceleration) * 1e9


def probability_plot(rows: Sequence[LifeRow], fit: WeibullFit, path: Path, *, title: str) -> None:
    """Weibull probability plot: failures at Bernard median ranks (Johnson-adjusted for censoring) and the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = sorted(
        ((row.failed_h, True) if row.status == "failed" else (row.censored_h, False))
        for row in rows
        if (row.failed_h if row.status == "failed" else row.censored_h) is not None
    )
    n, rank, points = len(units), 0.0, []
    for index, (hours, failed) in enumerate(units):
        if failed and hours:
            rank += (n + 1 - rank) / (1 + n - index)  # Johnson's adjusted rank
            points.append((hours, (rank - 0.3) / (n + 0.4)))
    figure, axes = plt.subplots(figsize=(7, 5))
    if points:
        hours_, probability = np.array(points).T
        axes.plot(np.log(hours_), np.log(-np.log(1 - probability)), "o", label="failures (median ranks)")
        span = np.linspace(np.log(hours_.min()) - 0.5, np.log(hours_.max()) + 0.5, 50)
        axes.plot(
            span, fit.beta * (span - math.log(fit.eta)), "-", label=f"fit beta={fit.beta:.3g} eta={fit.eta:.4g} h"
        )
    ticks = [0.01, 0.05, 0.1, 0.3, 0.5, 0.632, 0.9, 0.99]
    axes.set_yticks([math.log(-math.log(1 - p)) for p in ticks], [f"{p:g}" for p in ticks])
    axes.set_xlabel("ln(stress hours)")
    axes.set_ylabel("unreliability F(t)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
