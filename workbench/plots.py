"""Plot data and static figures for schedules (plotly for HTML, matplotlib for PNG).

The notebook widgets and the CLI share these functions, so a schedule looks the same in
``workbench schedule plot`` and in the ``ScheduleDesigner``.

Example:
    >>> from workbench import plots, schedules
    >>> c = plots.schedule_curves(schedules.cosine(peak_lr=1e-3, total_steps=100_000), max_points=500)
    >>> len(c["step"]) <= 501, int(c["step"][-1]), bool(c["lr"][0] == 1e-3)
    (True, 99999, True)
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from workbench import laws
from workbench.files import atomic_write, atomic_write_text
from workbench.schedules import Schedule

__all__ = ["display_steps", "schedule_curves", "schedule_figure", "schedule_figure_dict", "save_schedule_plot", "COLORS"]

COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
          "#ff97ff", "#fecb52"]
PANELS = ("learning rate", "S1: cumulative LR area", "S2: annealing area", "predicted loss")


def display_steps(total_steps: int, max_points: int = 2000) -> np.ndarray:
    """Up to ``max_points`` evenly spread steps in ``[0, total_steps)``, always the first and last."""
    if total_steps <= max_points:
        return np.arange(total_steps)
    return np.unique(np.linspace(0, total_steps - 1, max_points).round().astype(np.int64))


def schedule_curves(sched: Schedule, max_points: int = 2000, lam: float = 0.999,
                    predictor: Callable[[Schedule], Sequence[float]] | None = None) -> dict:
    """LR, S1, S2 (and predicted loss) of ``sched`` at display steps.

    S1/S2 are computed over every step (they are cumulative) and then sampled.
    ``predictor(sched)`` must return one predicted loss per step ``0..total_steps-1``.
    """
    lrs = sched.lrs()
    s1, s2 = laws.areas(lrs, lam=lam, warmup_steps=sched.warmup)
    idx = display_steps(lrs.size, max_points)
    out = {"step": idx, "lr": lrs[idx], "s1": s1[idx], "s2": s2[idx], "loss": None}
    if predictor is not None:
        loss = np.asarray(predictor(sched), dtype=np.float64).ravel()
        if loss.size != lrs.size:
            raise ValueError(f"predictor returned {loss.size} losses for a {lrs.size}-step schedule; "
                             "it must return one predicted loss per step")
        out["loss"] = loss[idx]
    return out


def _subplots():
    """The empty 2x2 figure of :func:`schedule_figure` (a subplot grid: ``add_trace(row=, col=)`` works)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=PANELS, horizontal_spacing=0.1, vertical_spacing=0.14)
    fig.update_xaxes(title_text="step", row=2)
    fig.update_yaxes(exponentformat="e", row=1, col=1)
    fig.update_layout(height=560, margin=dict(l=60, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.12),
                      template="plotly_white")
    return fig


def _subplot_layout() -> dict:
    """The layout of :func:`_subplots` as a plain dict (built once: plotly's validation is slow).

    A shallow copy: set top-level keys on it freely, but do not mutate nested values in place."""
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = _subplots().to_plotly_json()["layout"]
    return dict(_LAYOUT)


_LAYOUT = None
_AXES = {(1, 1): ("x", "y"), (1, 2): ("x2", "y2"), (2, 1): ("x3", "y3"), (2, 2): ("x4", "y4")}


def schedule_figure_dict(schedules: Sequence[Schedule], names: Sequence[str] | None = None,
                         predictor=None, max_points: int = 2000, lam: float = 0.999) -> dict:
    """:func:`schedule_figure` as a plain ``{"data": [...], "layout": {...}}`` dict: the same figure,
    built without plotly's per-object validation (a few ms instead of ~100), for redrawing on every
    slider move (the dashboard)."""
    data = []
    for i, s in enumerate(schedules):
        name = names[i] if names else f"{i + 1}: {s.family}"
        for trace, row, col in schedule_traces(s, name, COLORS[i % len(COLORS)], predictor, max_points, lam,
                                               as_dict=True):
            xa, ya = _AXES[(row, col)]
            data.append({**trace, "xaxis": xa, "yaxis": ya})
    return {"data": data, "layout": _subplot_layout()}


def schedule_figure(schedules: Sequence[Schedule], names: Sequence[str] | None = None,
                    predictor=None, max_points: int = 2000, lam: float = 0.999):
    """A 2x2 plotly figure: LR, S1, S2 and predicted loss (empty without ``predictor``) vs step."""
    fig = _subplots()
    fig.add_traces(schedule_figure_dict(schedules, names, predictor, max_points, lam)["data"])
    return fig


def schedule_traces(sched: Schedule, name: str, color: str, predictor=None, max_points: int = 2000,
                    lam: float = 0.999, as_dict: bool = False) -> list:
    """The four traces of one schedule, as ``(trace, row, col)`` (plain dicts with ``as_dict``)."""
    c = schedule_curves(sched, max_points, lam, predictor)
    keys = ("lr", "s1", "s2", "loss")
    places = ((1, 1), (1, 2), (2, 1), (2, 2))
    out = []
    for k, (row, col) in zip(keys, places):
        y = c[k] if c[k] is not None else []
        x = c["step"] if c[k] is not None else []
        trace = dict(type="scatter", x=x, y=y, name=name, legendgroup=name, showlegend=k == "lr",
                     line=dict(color=color), mode="lines")
        if not as_dict:
            import plotly.graph_objects as go

            trace = go.Scatter(**{k2: v for k2, v in trace.items() if k2 != "type"})
        out.append((trace, row, col))
    return out


def save_schedule_plot(schedules: Sequence[Schedule], path: str | os.PathLike, predictor=None) -> None:
    """Write a plot of ``schedules`` to ``.html`` (interactive, plotly inlined: works offline) or ``.png``."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".html":
        fig = schedule_figure(schedules, predictor=predictor)
        atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    elif ext == ".png":
        _save_png(schedules, path, predictor)
    else:
        raise ValueError(f"cannot plot to {path!r}: the output must end in .png or .html")


def _save_png(schedules, path, predictor):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for i, s in enumerate(schedules):
        c = schedule_curves(s, predictor=predictor)
        for ax, key in zip(axes.flat, ("lr", "s1", "s2", "loss")):
            if c[key] is not None:
                ax.plot(c["step"], c[key], color=COLORS[i % len(COLORS)], label=f"{i + 1}: {s.family}")
    for ax, title in zip(axes.flat, PANELS):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    if predictor is None:
        axes[1, 1].text(0.5, 0.5, "no predictor", ha="center", va="center", transform=axes[1, 1].transAxes)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
