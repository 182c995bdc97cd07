"""Chart geometry for inline SVG: numbers in, coordinates out; the templates draw them.

Keeping the arithmetic here (not in the templates) makes it testable and keeps the SVG
markup free of logic. Every label a chart carries is a plain string that the templates
escape like any other text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 640
# Colour-blind-safe (Okabe-Ito) palette, cycled over the series of a line chart.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # the value as shown
    y: float  # top of the row
    width: float  # bar length in px


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars, one row each: the label above its bar (long names never overlap)."""

    bars: list[Bar]
    height: float
    bar_max: float  # px of a bar at the domain's maximum
    row: float = 34.0
    label_dy: float = 12.0
    bar_dy: float = 16.0
    bar_h: float = 12.0
    width: int = WIDTH


def bar_chart(rows: Sequence[tuple[str, float, str]], domain_max: float | None = None,
              ) -> BarChart:
    """``rows``: (label, value, value as text). Bars scale to ``domain_max`` (default: the
    largest value), so a sparsity of 0.3 over a domain of 1 fills 30% of the bar area."""
    top = domain_max if domain_max is not None else max((v for _, v, _ in rows), default=0.0)
    bar_max = WIDTH - 100.0  # room for the value text after the longest bar
    chart = BarChart(bars=[], height=0, bar_max=bar_max)
    bars = [
        Bar(label=label, value=value, text=text, y=i * chart.row,
            width=round(bar_max * _clamp(value / top if top > 0 else 0.0), 2))
        for i, (label, value, text) in enumerate(rows)
    ]
    return BarChart(bars=bars, height=len(bars) * chart.row + 4, bar_max=bar_max)


def _clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if math.isnan(x) else min(hi, max(lo, x))


@dataclass(frozen=True)
class Axes:
    """A plot area and its two linear scales."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = WIDTH
    height: int = 300
    left: float = 56.0
    right: float = 16.0
    top: float = 12.0
    bottom: float = 40.0

    def x(self, value: float) -> float:
        span = self.x1 - self.x0
        frac = (value - self.x0) / span if span else 0.5
        return round(self.left + frac * (self.width - self.left - self.right), 2)

    def y(self, value: float) -> float:
        span = self.y1 - self.y0
        frac = (value - self.y0) / span if span else 0.5
        return round(self.height - self.bottom - frac * (self.height - self.top - self.bottom), 2)

    @property
    def plot_bottom(self) -> float:
        return self.height - self.bottom

    @property
    def plot_right(self) -> float:
        return self.width - self.right

    def y_ticks(self, most: int = 6) -> list[tuple[float, str]]:
        """Ticks at round steps (1, 2, 5, 10, 20%...), at most ``most`` of them."""
        span = self.y1 - self.y0
        step = next((s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if span / s < most), 1.0)
        first = math.ceil(self.y0 / step - 1e-9)
        values = [i * step for i in range(first, math.floor(self.y1 / step + 1e-9) + 1)]
        return [(self.y(v), f"{v * 100:.0f}%") for v in values]


def accuracy_axes(xs: Sequence[float], ys: Sequence[float]) -> Axes:
    """x: the amounts as given; y: accuracies, from a round 5% below the lowest up to 100%."""
    low = min(ys, default=0.0)
    y0 = max(0.0, math.floor(low * 20) / 20 - 0.05)
    return Axes(x0=min(xs, default=0.0), x1=max(xs, default=1.0), y0=y0, y1=1.0)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    amount: float
    accuracy: float


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: list[Point]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x},{p.y}" for p in self.points)


def line_series(axes: Axes, amounts: Sequence[float],
                curves: Sequence[tuple[str, Sequence[float]]]) -> list[Series]:
    """One polyline per (name, accuracies), accuracies given at ``amounts``."""
    return [
        Series(name=name, color=PALETTE[i % len(PALETTE)],
               points=[Point(axes.x(a), axes.y(acc), a, acc) for a, acc in zip(amounts, accs,
                                                                               strict=True)])
        for i, (name, accs) in enumerate(curves)
    ]
