"""Bar charts as SVG geometry, drawn on the server (no chart library, nothing fetched).

:func:`bars` turns labelled values into the rectangles, labels and axis of an SVG the
``chart.svg.j2`` macro renders; autoescaping covers the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 220
LEFT, BOTTOM, TOP = 44, 40, 16


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str  # as the chart's unit shows it
    show_label: bool


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]  # (y, value) of the horizontal grid lines
    baseline: float
    total: str
    left: int  # where the plot starts: room for the longest tick label


def count(value: int) -> str:
    return f"{value:,}"


def money(cents: int) -> str:
    """Cents as the tables show amounts: 1,234.50."""
    return f"{cents / 100:,.2f}"


def nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 1): the axis's top."""
    top = 1
    while top < value:
        head = str(top)[0]
        top = top * 2 if head == "1" else (top * 5) // 2 if head == "2" else top * 2
    return top


def bars(
    title: str,
    series: list[tuple[str, int]],
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    max_labels: int = 12,
    unit: Callable[[int], str] = count,
) -> Chart:
    """The chart of ``series``; ``unit`` writes its values (``money`` for cents as amounts)."""
    top = nice_max(max((v for _, v in series), default=0))
    left = max(LEFT, 14 + 7 * len(unit(top)))  # 12 px labels: about 7 px a character
    plot_w, plot_h = width - left - 8, height - TOP - BOTTOM
    n = max(len(series), 1)
    slot = plot_w / n
    every = max(1, -(-n // max_labels))  # label every k-th bar so labels never overlap
    out = []
    for i, (label, value) in enumerate(series):
        h = plot_h * value / top
        bar = Bar(left + i * slot + slot * 0.1, TOP + plot_h - h, slot * 0.8, h, label, unit(value), i % every == 0)
        out.append(bar)
    steps = min(top, 5)  # tops are 1, 2, 5 x 10^k: every tick is a whole number
    ticks = tuple((TOP + plot_h - plot_h * k / steps, unit(top * k // steps)) for k in range(steps + 1))
    total = unit(sum(v for _, v in series))
    return Chart(title, width, height, tuple(out), ticks, TOP + plot_h, total, left)
