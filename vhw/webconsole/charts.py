"""Bar charts as SVG geometry, drawn on the server (no chart library, nothing fetched).

:func:`bars` turns labelled values into the rectangles, labels and axis of an SVG the
``chart.svg.j2`` macro renders; autoescaping covers the labels.
"""

from __future__ import annotations

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
    value: int
    show_label: bool


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, int], ...]  # (y, value) of the horizontal grid lines
    baseline: float
    total: int


def nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 1): the axis's top."""
    top = 1
    while top < value:
        head = str(top)[0]
        top = top * 2 if head == "1" else (top * 5) // 2 if head == "2" else top * 2
    return top


def bars(
    title: str, series: list[tuple[str, int]], *, width: int = WIDTH, height: int = HEIGHT, max_labels: int = 12
) -> Chart:
    plot_w, plot_h = width - LEFT - 8, height - TOP - BOTTOM
    top = nice_max(max((v for _, v in series), default=0))
    n = max(len(series), 1)
    slot = plot_w / n
    every = max(1, -(-n // max_labels))  # label every k-th bar so labels never overlap
    out = []
    for i, (label, value) in enumerate(series):
        h = plot_h * value / top
        out.append(Bar(LEFT + i * slot + slot * 0.1, TOP + plot_h - h, slot * 0.8, h, label, value, i % every == 0))
    steps = min(top, 5)  # tops are 1, 2, 5 x 10^k: every tick is a whole number
    ticks = tuple((TOP + plot_h - plot_h * k / steps, top * k // steps) for k in range(steps + 1))
    return Chart(title, width, height, tuple(out), ticks, TOP + plot_h, sum(v for _, v in series))
