"""Weibull analysis of a life table with SciPy (the ``analysis`` extra: ``pip install edge-daq[analysis]``).

- Data: a failed DUT's life lies in (last good, first violation] (interval-censored; (0, t] when it never had
  a good poll under stress, i.e. left-censored), exact when both are the same time; survivors and removed DUTs
  are right-censored at the stress time they were known good until. A failure at 0 stress hours (before any
  stress) has no Weibull likelihood: it is counted but left out of the fit, and the report says so.
- Fit: maximum likelihood of the 2-parameter Weibull (location 0) over those data, maximised by
  ``scipy.optimize.minimize`` (BFGS on log beta and log eta, analytic gradient), started from a median-rank
  regression. SciPy is a runtime dependency of the ``analysis`` extra because a maintained optimiser and the
  chi-squared / normal quantiles beat hand-written ones.
- Confidence bounds on beta and eta: Fisher-matrix (Wald) bounds on log(beta) and log(eta) from the observed
  information (the Hessian of the same log-likelihood at the optimum), two-sided at ``confidence``: what the
  ``reliability`` package, surpyval and most commercial tools report by default.
- Ranks (probability plot): Johnson's adjusted ranks with Bernard's approximation F = (rank - 0.3) / (n + 0.4),
  every DUT in the ordering (suspensions move the later failures' ranks), a failure before a suspension at the
  same time. An interval-censored failure is placed at the middle of its interval (at its first violation, the
  upper bound, it would sit up to a poll interval right of where the likelihood puts it: a visible bias when
  polls are coarse against the lives); a left-censored one at its upper bound. The plot shows ln(-ln(1 - F))
  against ln(t), the axes on which the fit is the straight line
  ln(-ln(1 - F)) = beta * (ln t - ln eta).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_daq.reliability.life import LifeRow


@dataclass(frozen=True, slots=True)
class LifeData:
    """A life table as the likelihood sees it, in stress hours."""

    exact: list[float] = field(default_factory=list)
    right: list[float] = field(default_factory=list)
    interval: list[tuple[float, float]] = field(default_factory=list)  # (low, high]; low 0: left-censored
    at_zero: int = 0  # failures at 0 stress hours: no Weibull likelihood, not in the fit

    @property
    def failures(self) -> int:
        return len(self.exact) + len(self.interval)


@dataclass(frozen=True, slots=True)
class WeibullFit:
    beta: float
    eta: float
    beta_bounds: tuple[float, float]
    eta_bounds: tuple[float, float]
    confidence: float
    failures: int
    censored: int
    log_likelihood: float = math.nan


class FitError(ValueError):
    """The life table does not support a Weibull fit; the message says why, in plain words."""


def import_scipy() -> Any:
    try:
        import scipy.stats
    except ImportError as error:
        raise RuntimeError("the Weibull analysis needs SciPy: pip install 'edge-daq[analysis]'") from error
    return scipy.stats


def life_data(rows: Sequence[LifeRow]) -> LifeData:
    data = LifeData()
    at_zero = 0
    for row in rows:
        if row.status == "failed" and row.failed_h is not None:
            high = row.failed_h
            low = min(row.last_good_h or 0.0, high)
            if high <= 0:
                at_zero += 1
            elif low >= high:
                data.exact.append(high)
            else:
                data.interval.append((low, high))
        elif row.status != "failed" and row.censored_h is not None and row.censored_h > 0:
            data.right.append(row.censored_h)
    return LifeData(data.exact, data.right, data.interval, at_zero)


def split_life(rows: Sequence[LifeRow]) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """Exact failure times, right-censored times and (last good, failed) intervals, in stress hours."""
    data = life_data(rows)
    return data.exact, data.right, data.interval


class _Likelihood:
    """Log-likelihood of a 2-parameter Weibull and its gradient in (log beta, log eta), vectorised."""

    def __init__(self, data: LifeData) -> None:
        import numpy as np

        self.np = np
        self.exact = np.log(np.asarray(data.exact, dtype=float))
        self.right = np.log(np.asarray(data.right, dtype=float))
        interval = np.asarray(data.interval, dtype=float).reshape(-1, 2)
        self.left_open = interval[:, 0] <= 0  # (0, t]: left-censored
        with np.errstate(divide="ignore"):
            self.low = np.log(np.where(self.left_open, 1.0, interval[:, 0]))
        self.high = np.log(interval[:, 1])

    def value_and_gradient(self, theta: Any) -> tuple[float, Any]:
        np = self.np
        u, v = float(theta[0]), float(theta[1])
        beta = math.exp(u)
        total, du, dv = 0.0, 0.0, 0.0
        if self.exact.size:
            s = self.exact - v
            z = np.exp(beta * s)
            total += float(np.sum(u - v + (beta - 1) * s - z))
            du += float(np.sum(1 + beta * s - z * beta * s))
            dv += float(np.sum(-beta + beta * z))
        if self.right.size:
            s = self.right - v
            z = np.exp(beta * s)
            total -= float(np.sum(z))
            du -= float(np.sum(z * beta * s))
            dv += float(np.sum(beta * z))
        if self.high.size:
            s_low, s_high = self.low - v, self.high - v
            z_low = np.where(self.left_open, 0.0, np.exp(beta * s_low))
            z_high = np.exp(beta * s_high)
            # log(S(low) - S(high)) = -z_low + log(1 - w), w = exp(z_low - z_high), computed without cancellation
            gap = np.maximum(z_high - z_low, 1e-300)
            one_minus_w = -np.expm1(-gap)
            w = 1 - one_minus_w
            total += float(np.sum(-z_low + np.log(one_minus_w)))
            dz_low_u = np.where(self.left_open, 0.0, z_low * beta * s_low)
            dz_high_u = z_high * beta * s_high
            du += float(np.sum((-dz_low_u + w * dz_high_u) / one_minus_w))
            dv += float(np.sum((beta * z_low - w * beta * z_high) / one_minus_w))
        return total, np.array([du, dv])

    def negative(self, theta: Any) -> tuple[float, Any]:
        value, gradient = self.value_and_gradient(theta)
        if not math.isfinite(value):
            return 1e300, self.np.zeros(2)
        return -value, -gradient

    def hessian(self, theta: Any) -> Any:
        """Hessian of the log-likelihood: central differences of the analytic gradient, symmetrised."""
        np = self.np
        hessian = np.zeros((2, 2))
        for i in range(2):
            step = 1e-5 * max(1.0, abs(float(theta[i])))
            shift = np.zeros(2)
            shift[i] = step
            hessian[i] = (self.value_and_gradient(theta + shift)[1] - self.value_and_gradient(theta - shift)[1]) / (
                2 * step
            )
        return (hessian + hessian.T) / 2


def _start(data: LifeData) -> tuple[float, float]:
    """Median-rank regression on the failure times (interval failures at their midpoint) as the start."""
    import numpy as np

    failures = sorted([*data.exact, *((low + high) / 2 for low, high in data.interval)])
    units = sorted([(t, 0) for t in failures] + [(t, 1) for t in data.right])
    n, rank, xs, ys = len(units), 0.0, [], []
    for index, (hours, censored) in enumerate(units):
        if not censored:
            rank += (n + 1 - rank) / (1 + n - index)
            xs.append(math.log(hours))
            ys.append(math.log(-math.log(1 - (rank - 0.3) / (n + 0.4))))
    if len(set(xs)) < 2:
        return 0.0, xs[0] if xs else 0.0
    slope, intercept = np.polyfit(ys, xs, 1)  # x on y, as rank regression does
    beta = 1 / slope if slope > 0 else 1.0
    return math.log(min(max(beta, 0.05), 50.0)), float(intercept)


def fit_weibull(rows: Sequence[LifeRow], *, confidence: float = 0.9) -> WeibullFit:
    """Censored MLE of beta and eta (stress hours) with Fisher-matrix bounds; FitError when not possible."""
    if not 0 < confidence < 1:
        raise FitError(f"the confidence must be between 0 and 1, got {confidence}")
    data = life_data(rows)
    return fit_life_data(data, confidence=confidence, rows=len(rows))


def fit_life_data(data: LifeData, *, confidence: float = 0.9, rows: int | None = None) -> WeibullFit:
    import numpy as np
    from scipy.optimize import minimize

    stats = import_scipy()
    failures = data.failures
    if failures < 2:
        raise FitError(f"a Weibull fit needs at least 2 failures after 0 stress hours, the life table has {failures}")
    times = {*data.exact, *(high for _, high in data.interval)}
    if len(times) < 2 and not data.right and not any(low > 0 for low, _ in data.interval):
        raise FitError("every failure is at the same stress time: the Weibull slope is unbounded")
    likelihood = _Likelihood(data)
    start = np.array(_start(data))
    result = minimize(likelihood.negative, start, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500})
    theta = result.x
    if not np.all(np.isfinite(theta)) or not math.isfinite(result.fun) or result.fun >= 1e300:
        raise FitError(f"the likelihood maximisation did not converge ({result.message})")
    beta, eta = math.exp(theta[0]), math.exp(theta[1])
    if beta > 1e3 or beta < 1e-3:
        raise FitError(f"the Weibull slope runs away (beta = {beta:.3g}): the failures carry no spread to fit")
    hessian = likelihood.hessian(theta)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    try:
        covariance = np.linalg.inv(-hessian)
        se_log_beta, se_log_eta = math.sqrt(covariance[0, 0]), math.sqrt(covariance[1, 1])
    except (np.linalg.LinAlgError, ValueError):
        se_log_beta = se_log_eta = math.nan
    total = len(data.exact) + len(data.interval) + len(data.right) + data.at_zero
    return WeibullFit(
        beta=beta,
        eta=eta,
        beta_bounds=(beta * math.exp(-z * se_log_beta), beta * math.exp(z * se_log_beta)),
        eta_bounds=(eta * math.exp(-z * se_log_eta), eta * math.exp(z * se_log_eta)),
        confidence=confidence,
        failures=failures,
        censored=(rows if rows is not None else total) - failures - data.at_zero,
        log_likelihood=-float(result.fun),
    )


@dataclass(frozen=True, slots=True)
class RankPoint:
    hours: float  # where it is plotted: the middle of (low, high], high when low is 0 (left-censored)
    unreliability: float  # Bernard's approximation of Johnson's adjusted rank
    low: float  # the last good poll (0: none under stress, left-censored)
    high: float  # the first violation

    @property
    def left_censored(self) -> bool:
        return self.low <= 0


def median_ranks(rows: Sequence[LifeRow]) -> list[RankPoint]:
    """The failures' plotting positions: Johnson's adjusted ranks over every DUT, Bernard's approximation."""
    units: list[tuple[float, int, float, float]] = []  # (plotted hours, 0 failure / 1 suspension, low, high)
    for row in rows:
        if row.status == "failed" and row.failed_h is not None and row.failed_h > 0:
            high = row.failed_h
            low = min(row.last_good_h or 0.0, high)
            units.append(((low + high) / 2 if low > 0 else high, 0, low, high))
        elif row.status != "failed" and row.censored_h is not None and row.censored_h > 0:
            units.append((row.censored_h, 1, row.censored_h, row.censored_h))
    units.sort()
    n, rank, points = len(units), 0.0, []
    for index, (hours, censored, low, high) in enumerate(units):
        if not censored:
            rank += (n + 1 - rank) / (1 + n - index)  # (n + 1 - previous rank) / (1 + units from here on)
            points.append(RankPoint(hours, (rank - 0.3) / (n + 0.4), low, high))
    return points


def device_hours(rows: Sequence[LifeRow]) -> float:
    """Stress hours summed over the DUTs: to the failure (first violation) or the suspension."""
    return sum((row.failed_h if row.status == "failed" else row.censored_h) or 0.0 for row in rows)


def weibull_y(unreliability: float) -> float:
    """The probability axis of a Weibull plot: ln(-ln(1 - F))."""
    return math.log(-math.log(1 - unreliability))


def fitted_y(fit: WeibullFit, hours: float) -> float:
    """The fitted line on the plot's axes: ln(-ln(1 - F(t))) = beta * (ln t - ln eta)."""
    return fit.beta * (math.log(hours) - math.log(fit.eta))
