"""The Weibull probability plot (matplotlib, the ``analysis`` extra): the points and the line of the fit, on
the same axes and with the same ranks as :mod:`edge_daq.reliability.weibull` computes them.

x: stress hours on a log scale; y: unreliability on the Weibull scale ln(-ln(1 - F)). Points: Johnson's
adjusted ranks with Bernard's approximation (suspensions counted), at the middle of each failure's interval
(last good poll, first violation], drawn as a horizontal bar; hollow points are failures with no good poll
before them (left-censored: somewhere in (0, t]). Line: the MLE fit, ln(-ln(1 - F)) = beta (ln t - ln eta).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edge_daq.reliability.life import LifeRow
from edge_daq.reliability.weibull import WeibullFit, fitted_y, median_ranks, weibull_y

PROBABILITY_TICKS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.632, 0.8, 0.9, 0.99, 0.999)


def probability_plot(rows: Sequence[LifeRow], fit: WeibullFit, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = median_ranks(rows)
    figure, axes = plt.subplots(figsize=(7, 5))
    labels = {
        False: "failures (median ranks; bar: last good poll to first violation)",
        True: "failures, no good poll before",
    }
    for left, label in labels.items():
        shown = [point for point in points if point.left_censored is left]
        if shown:
            axes.errorbar(
                [point.hours for point in shown],
                [weibull_y(point.unreliability) for point in shown],
                xerr=None if left else [[p.hours - p.low for p in shown], [p.high - p.hours for p in shown]],
                fmt="o",
                color="C1" if left else "C0",
                markerfacecolor="none" if left else None,
                elinewidth=0.8,
                label=label,
            )
    hours = [point.low for point in points if point.low > 0] + [point.high for point in points] or [fit.eta]
    low, high = math.log(min(hours)) - 0.5, math.log(max(hours)) + 0.5
    span = [math.exp(low + (high - low) * i / 99) for i in range(100)]
    axes.plot(
        span,
        [fitted_y(fit, t) for t in span],
        "-",
        color="C2",
        label=f"MLE fit: beta = {fit.beta:.3g}, eta = {fit.eta:.4g} h",
    )
    axes.set_xscale("log")
    ys = [weibull_y(p) for p in PROBABILITY_TICKS]
    axes.set_yticks(ys, [f"{p:g}" for p in PROBABILITY_TICKS])
    shown_y = [weibull_y(point.unreliability) for point in points] + [fitted_y(fit, span[0]), fitted_y(fit, span[-1])]
    axes.set_ylim(max(min(shown_y), ys[0]) - 0.3, min(max(shown_y), ys[-1]) + 0.3)
    axes.set_xlabel("stress hours")
    axes.set_ylabel("unreliability F(t) (Weibull scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
