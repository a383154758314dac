"""Drawing and saving figures: seaborn styling, mean +/- std bands, atomic files.

Styling is applied through context managers around each figure rather than by changing
matplotlib's global settings, so importing or calling this module leaves a caller's own
plots alone. Without ``--show`` the non-interactive Agg backend is selected, so a script
never opens a window or waits for one to close.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from data.report.labels import Metric, is_baseline, config_colour, config_linestyle, describe_config
from data.results import SeedBand, band_over_seeds
from utils import atomic_write, ensure_writable_dir, get_logger

FIGURE_SIZE = (8.0, 5.0)   # inches: readable on a screen and in a two-column paper at 150 dpi
DPI = 150


def select_backend(show: bool) -> None:
    """Agg (files only) unless windows were asked for; must run before pyplot draws anything."""
    import matplotlib

    if not show:
        matplotlib.use("Agg", force=True)


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Seaborn's white grid and readable font sizes, for the figures made inside the block."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    settings = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"),
                "figure.dpi": 100, "savefig.dpi": DPI, "legend.framealpha": 0.9}
    with plt.rc_context(settings):
        yield


@dataclass(frozen=True)
class Series:
    """One line of a figure: an across-seed band and how to draw it."""

    band: SeedBand
    label: str
    colour: str | tuple       # any matplotlib colour
    linestyle: str = "-"
    on_top: bool = False    # the reference line: drawn over lines that may coincide with it


def config_series(name: str, band: SeedBand) -> Series:
    """A configuration's line in its own colour and words; the baseline dashed and on top."""
    return Series(band, describe_config(name), config_colour(name), config_linestyle(name),
                  on_top=is_baseline(name))


def with_seed_count(label: str, n: int) -> str:
    return f"{label} (n={n})" if n != 1 else f"{label} (1 run)"


def draw_band(ax, series: Series, marker: str | None = None, seed_count: bool = True) -> None:
    """The mean as a line and mean +/- one standard deviation as a shaded band.

    Energy, CO2, losses and accuracies are never negative, so for such a curve the band is
    cut at zero instead of showing impossible values when the spread exceeds the mean.
    """
    band = series.band
    ax.plot(band.x, band.mean, color=series.colour, linestyle=series.linestyle, marker=marker,
            markersize=4, linewidth=1.8,
            label=with_seed_count(series.label, band.n) if seed_count else series.label,
            zorder=3 if series.on_top else 2)
    if band.n > 1:
        lower = band.mean - band.std
        if np.all(band.mean >= 0):  # a quantity that cannot be negative: the band stops at zero
            lower = np.maximum(lower, 0.0)
        ax.fill_between(band.x, lower, band.mean + band.std, color=series.colour, alpha=0.18,
                        linewidth=0)


def shared_seed_count(title: str, counts: Sequence[int]) -> tuple[str, bool]:
    """The title with the seed count said once when every line has the same one (legend entries
    then leave it out); whether it was."""
    if len(set(counts)) != 1:
        return title, False
    n = counts[0]
    return f"{title}; {n} seed{'s' if n != 1 else ''} each", True


def line_figure(series: Sequence[Series], xlabel: str, ylabel: str, title: str, *,
                marker_below: int = 30):
    """One figure, one band per series; markers when there are few points (short runs).
    The seed count shared by every line is said in the title, not in each legend entry."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    title, shared = shared_seed_count(title, [item.band.n for item in series])
    for item in series:
        marker = "o" if len(item.band.x) < marker_below else None
        draw_band(ax, item, marker, seed_count=not shared)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    set_title(ax, title)
    scientific_when_tiny_or_huge(ax)
    place_legend(fig, ax)
    return fig


def set_title(ax, title: str) -> None:
    """The title, raised clear of the axis' offset text ("1e-6" above the y axis)."""
    import textwrap

    ax.set_title(textwrap.fill(title, 70), pad=16)


def add_caption(fig, caption: str) -> None:
    """A small note under the axes (e.g. how the energy was measured), laid out with them."""
    import textwrap

    if caption:
        fig.supxlabel(textwrap.fill(caption, 120), fontsize="x-small", color="#555555", ha="center")


def metric_figures(writer: "FigureWriter", groups: dict, values: Callable[[object, str], Mapping],
                   metrics: Sequence[Metric], x_axes: Sequence[tuple[Metric, Callable | None]],
                   series_for: Callable[[object, SeedBand], Series], prefix: str, title: str,
                   caption: str = "") -> None:
    """One figure per metric and x axis, one across-seed band per group, saved as
    ``{prefix}_{metric slug}_vs_{axis slug}``.

    ``groups`` maps a key to its seeds' items (a training run, a list of CodeCarbon records...);
    ``values(item, metric key)`` gives one seed's {step: value}; each x axis comes with a function
    giving one seed's {step: x}, or None to draw against the step itself. A figure in which every
    line is zero (GPU power on a machine without a GPU) is left out and named in the log.
    """
    all_zero = []
    for metric in metrics:
        for x_axis, xs_of in x_axes:
            if metric.key == x_axis.key:
                continue  # duration against duration says nothing
            series = []
            for key, items in groups.items():
                band = band_over_seeds([values(item, metric.key) for item in items],
                                       None if xs_of is None else [xs_of(item) for item in items])
                if len(band.x):
                    series.append(series_for(key, band))
            if not series:
                continue
            if all(np.all(np.nan_to_num(item.band.mean) == 0) for item in series):
                all_zero.append(f"{metric.slug}_vs_{x_axis.slug}")
                continue
            fig = line_figure(series, x_axis.label, metric.label, title)
            add_caption(fig, caption)
            writer.save(fig, f"{prefix}_{metric.slug}_vs_{x_axis.slug}")
    if all_zero:
        get_logger().info("No figure of %s: zero in every run (nothing was measured there).",
                          ", ".join(all_zero))


def plotted_points(ax) -> np.ndarray:
    """Every plotted point of ``ax`` (line vertices, error-bar ends, band corners) in display
    coordinates, as an N x 2 array."""
    points = [line.get_transform().transform(np.column_stack(line.get_data()))
              for line in ax.get_lines() if len(line.get_xdata())]
    for collection in ax.collections:
        for path in collection.get_paths():
            points.append(collection.get_transform().transform(path.vertices))
    points = [p for p in points if len(p)]
    return np.concatenate(points) if points else np.empty((0, 2))


def covers_data(ax, legend) -> bool:
    """Whether ``legend`` lies over any plotted point of ``ax`` (a horizontal line counts at
    the ends of its visible span, which is where its points are)."""
    renderer = ax.figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    points = plotted_points(ax)
    axes_box = ax.get_window_extent(renderer)
    inside = points[(points[:, 0] >= axes_box.x0) & (points[:, 0] <= axes_box.x1)
                    & (points[:, 1] >= axes_box.y0) & (points[:, 1] <= axes_box.y1)] if len(points) else points
    return bool(len(inside) and np.any((inside[:, 0] >= box.x0) & (inside[:, 0] <= box.x1)
                                       & (inside[:, 1] >= box.y0) & (inside[:, 1] <= box.y1)))


def place_legend(fig, ax, inside_up_to: int = 3) -> None:
    """Inside the axes for a few lines when a corner is free of data; otherwise to the right of
    the axes, where it can neither hide a curve nor run into the caption below."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) <= inside_up_to:
        fig.canvas.draw()   # lay out first, so that extents are final
        legend = ax.legend(loc="best", fontsize="small")
        fig.canvas.draw()
        if not covers_data(ax, legend):
            return
        legend.remove()
    legend_outside(fig, ax, handles, labels)


def legend_outside(fig, ax, handles, labels) -> None:
    """The legend to the right of the axes, its entries wrapped; the title then spans the
    figure (unless the figure has a title of its own)."""
    import textwrap

    fig.legend(handles, [textwrap.fill(label, 30) for label in labels], loc="outside right center",
               fontsize="small", ncols=1)
    if ax.get_title() and not fig.get_suptitle():
        fig.suptitle(ax.get_title(), fontsize=ax.title.get_fontsize())
        ax.set_title("")


def settle_legends(fig) -> None:
    """Once a figure is complete (captions change the layout): a legend inside axes that now
    lies over data moves outside them."""
    fig.canvas.draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None and covers_data(ax, legend):
            handles, labels = ax.get_legend_handles_labels()
            legend.remove()
            legend_outside(fig, ax, handles, labels)


def scientific_when_tiny_or_huge(ax) -> None:
    """A 1e-6 offset above the axis rather than long decimals (kWh and kg of one run are tiny)."""
    formatter = ax.yaxis.get_major_formatter()
    if hasattr(formatter, "set_powerlimits"):
        formatter.set_powerlimits((-3, 4))


@dataclass
class FigureWriter:
    """Saves figures under one folder, atomically, and remembers what it wrote."""

    folder: Path
    file_format: str = "png"
    show: bool = False
    written: list[Path] = field(default_factory=list)

    def __post_init__(self):
        ensure_writable_dir(self.folder, "plots directory")

    def save(self, fig, name: str) -> Path:
        """Write ``fig`` as ``folder/name.FORMAT``; close it unless it is to be shown."""
        import matplotlib.pyplot as plt

        path = self.folder / f"{name}.{self.file_format}"
        settle_legends(fig)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=self.file_format, dpi=DPI))
        if not self.show:
            plt.close(fig)
        self.written.append(path)
        return path

    def finish(self) -> list[Path]:
        """Open the windows when asked (this waits until they are closed), then return the files."""
        if self.show:
            import matplotlib.pyplot as plt

            plt.show()
        return list(self.written)


def sparse_log_ticks(values: Sequence[float], min_ratio: float = 1.2) -> list[float]:
    """The distinct values, largest first, dropping any within ``min_ratio`` of one kept before,
    so that ticks such as 10 and 10.24 on a log axis do not print over each other."""
    kept: list[float] = []
    for value in sorted({float(v) for v in values if v > 0}, reverse=True):
        if not kept or kept[-1] / value >= min_ratio:
            kept.append(value)
    return kept


def percent_tick_label(value: float) -> str:
    """100 -> '100', 10.24 -> '10', 3.2768 -> '3.3': whole percents above 10, two digits below."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"
