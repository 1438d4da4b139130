"""Line charts as inline SVG: training curves (raw and smoothed, optional std band) and held-out curves with
95% intervals, for one run or several overlaid."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from thinktune.stats import wilson_interval

COLOURS = ["#2f6db5", "#d1495b", "#3a9d5d", "#e09f3e", "#7b4fa0", "#4a4a4a", "#1fa2a8", "#b5651d"]


@dataclass
class Line:
    label: str
    steps: list[float]
    values: list[float]
    band: list[float] | None = None  # ± this around each value (a std), drawn shaded
    low: list[float] | None = None  # an interval drawn as error bars (held-out curves)
    high: list[float] | None = None
    points: bool = False  # markers at each value (few, meaningful points: evaluations)


@dataclass
class Chart:
    title: str
    lines: list[Line] = field(default_factory=list)
    y_label: str = ""
    unit_interval: bool = False  # a rate or accuracy: y from 0 to 1

    @property
    def empty(self) -> bool:
        return not any(line.values for line in self.lines)

    @property
    def flat(self) -> bool:
        """Every line holds one value throughout (KL without a KL term, a constant learning rate)."""
        return len({v for line in self.lines for v in line.values}) == 1 and len(self.lines[0].values) > 1


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over up to ``window`` values.

    >>> smooth([0.0, 2.0, 4.0, 6.0], 2)
    [0.0, 1.0, 3.0, 5.0]
    """
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def held_out_line(label: str, curve: list[dict], key: str) -> Line:
    """A held-out metric by step with its 95% Wilson interval (a share of ``n`` problems)."""
    points = [r for r in curve if isinstance(r.get(key), int | float)]
    intervals = [wilson_interval(r[key] * r.get("n", 0), int(r.get("n", 0))) for r in points]
    return Line(
        label,
        [r["step"] for r in points],
        [r[key] for r in points],
        low=[lo for lo, _ in intervals],
        high=[hi for _, hi in intervals],
        points=True,
    )


def svg(chart: Chart) -> str:
    """The chart as an ``<svg>`` element (text kept as text, so the page stays small and searchable)."""
    import matplotlib
    from matplotlib.figure import Figure

    # A Figure of its own, not pyplot's: no backend is chosen, so a notebook's inline plots keep working
    style = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(style):
        figure = Figure(figsize=(5.4, 2.9))
        axes = figure.subplots()
        for colour, line in zip(COLOURS * 4, chart.lines, strict=False):
            _draw(axes, line, colour, several=len(chart.lines) > 1)
        axes.set_title(chart.title, loc="left", fontsize=10, fontweight="bold")
        axes.set_xlabel("step")
        if chart.y_label:
            axes.set_ylabel(chart.y_label)
        if chart.unit_interval:
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.25)
        if len(chart.lines) > 1 or chart.lines and chart.lines[0].label:
            axes.legend(fontsize=8, frameon=False)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _draw(axes, line: Line, colour: str, several: bool) -> None:
    if line.points:
        yerr = None
        if line.low is not None:
            yerr = [  # at 0 or 1 an interval's edge can sit a rounding error inside the value
                [max(0.0, v - lo) for v, lo in zip(line.values, line.low, strict=True)],
                [max(0.0, hi - v) for v, hi in zip(line.values, line.high, strict=True)],
            ]
        axes.errorbar(line.steps, line.values, yerr=yerr, color=colour, marker="o", ms=4, capsize=3, label=line.label)
        return
    window = max(1, len(line.values) // 20)
    if line.band is not None:
        low = [v - b for v, b in zip(line.values, line.band, strict=True)]
        high = [v + b for v, b in zip(line.values, line.band, strict=True)]
        axes.fill_between(line.steps, smooth(low, window), smooth(high, window), color=colour, alpha=0.12, lw=0)
    if window > 1:  # the raw values faint, their moving average on top
        axes.plot(line.steps, line.values, color=colour, alpha=0.25 if not several else 0.12, lw=0.8)
        axes.plot(line.steps, smooth(line.values, window), color=colour, lw=1.6, label=line.label)
    else:
        axes.plot(line.steps, line.values, color=colour, lw=1.4, label=line.label)
