"""Latency-distribution plots for `secretivex bench compare` (optional extra ``plot``).

Reports keep percentiles, not raw samples, so the plot is the classic percentile
curve: latency (log scale) against percentile on a "nines" axis (p50, p90, p99...),
one thin line per run and a bold median line per agent. matplotlib is imported only
here, with the non-interactive Agg backend (no display, no threads).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secretivex.metrics.histogram import PERCENTILES

INSTALL_HINT = "pip install 'secretivex[plot]'"
FORMATS = ("svg", "png")
_MAX_X = 3.0  # where "max" sits on the nines axis (p99.9)


class PlotUnavailableError(Exception):
    """matplotlib is not installed; the message says how to get it."""


def _points() -> list[tuple[str, float]]:
    """(report key, x position): min at 0, each percentile at -log10(1 - q), max last."""
    out = [("min", 0.0)]
    out += [(label, -math.log10(1.0 - q)) for label, q in PERCENTILES]
    out.append(("max", _MAX_X))
    return out


def _curve(report: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    latency = report.get("latency_us") or {}
    xs, ys = [], []
    for key, x in _points():
        value = latency.get(key)
        if isinstance(value, int | float) and value > 0:
            xs.append(x)
            ys.append(float(value))
    return xs, ys


def plot_file_name(scenario: str, fmt: str) -> str:
    return f"{scenario}.latency.{fmt}"


def plot_scenario(
    scenario: str,
    agents: Mapping[str, Sequence[Mapping[str, Any]]],
    directory: Path,
    *,
    fmt: str = "svg",
) -> Path | None:
    """Write ``<scenario>.latency.<fmt>`` in ``directory``; None when no run has latencies."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(f"matplotlib is not installed ({INSTALL_HINT})") from None

    # Text stays text in SVG (searchable, small); no timestamp, so reruns diff cleanly.
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "secretivex"
    figure, axes = plt.subplots(figsize=(7, 4.2))
    drawn = False
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    try:
        for index, (agent, reports) in enumerate(sorted(agents.items())):
            color = colors[index % len(colors)]
            curves = [_curve(r) for r in reports]
            curves = [c for c in curves if c[0]]
            for xs, ys in curves:
                axes.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            if not curves:
                continue
            # Median per point across runs, over the points every run has.
            common = sorted(set.intersection(*(set(xs) for xs, _ in curves)))
            medians = [statistics.median(ys[xs.index(x)] for xs, ys in curves) for x in common]
            axes.plot(common, medians, color=color, linewidth=2.2, marker="o",
                      label=f"{agent} (median of {len(curves)} run(s))")  # fmt: skip
            drawn = True
        if not drawn:
            return None
        ticks = _points()
        axes.set_xticks([x for _, x in ticks], [key for key, _ in ticks])
        axes.set_yscale("log")
        axes.set_xlabel("percentile")
        axes.set_ylabel("latency (µs, log scale)")
        axes.set_title(f"{scenario}: request latency distribution")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="upper left")
        figure.tight_layout()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / plot_file_name(scenario, fmt)
        metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
        figure.savefig(path, format=fmt, metadata=metadata)
        return path
    finally:
        plt.close(figure)
