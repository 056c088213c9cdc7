"""``AngleSelector``: look at angle-concentration scores and choose a GAIN-RL training subset.

A thin view over :class:`workbench.data.sampler.GainSampler` (GAIN-RL, Wang et al. 2506.02281):
samples are ranked by score (rank 0 = most concentrated), the centre ``mu`` and width ``sigma``
of the Gaussian over ranks, the subset size and the seed are controls, and the chosen subset is
exactly the sampler's draw for epoch 0 with those values. The scatter shows score against loss,
gradient norm or rank with the subset highlighted, the histogram the scores of all samples and of
the subset; clicking a point shows its text. No maths lives here.

Example:
    >>> from workbench.widgets import AngleSelector
    >>> sel = AngleSelector([0.1, 0.9, 0.5, 0.7], texts=["q0", "q1", "q2", "q3"],
    ...                     subset_size=2, sigma=0.01)
    >>> sel.selected.tolist()                  # the two most concentrated samples
    [1, 3]
    >>> sel.mu.value = 2.5                     # what dragging the centre does: ranks 2 and 3
    >>> sel.selected.tolist()
    [0, 2]
    >>> sel.show(2); "q2" in sel.details.value  # what clicking sample 2 does
    True
    >>> sel.export("subset.json")  # doctest: +SKIP
    >>> sel  # doctest: +SKIP
    ... # in a notebook: the controls, the scatter, the histogram and the text pane
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from workbench import plots
from workbench.data.sampler import GainSampler
from workbench.runlog import write_json_atomic

__all__ = ["AngleSelector"]

DEFAULT_SIGMA = 1000.0          # GAIN-RL's start value (REFERENCE.md section 4)
_Y_LABELS = {"loss": "loss", "grad_norm": "gradient norm", "rank": "rank (0 = most concentrated)"}
_SCATTERGL_FROM = 5000          # samples from which the scatter uses WebGL


def _vector(name: str, values, n: int | None) -> np.ndarray:
    if hasattr(values, "detach"):                      # torch tensors
        values = values.detach().cpu().numpy()
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of numbers, one per sample") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one number per sample), got shape {a.shape}; "
                         "flatten it or pass one column")
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} entries but scores has {n}; pass one per sample, "
                         "in the order of scores")
    return a


class AngleSelector(W.VBox):
    """Per-sample scores, the GAIN sampler's controls and the subset they choose.

    Args:
        scores: angle-concentration score per sample (e.g. ``angle_concentration(...)["score"]`` or
            the ``score`` column of ``workbench angles score``); finite values only.
        texts: the sample's text (prompt), shown when a point is clicked.
        losses, grad_norms: optional per-sample values for the scatter's y axis (the dropdown picks
            one of them or the rank).
        subset_size: samples to draw (default ``ceil(n / 10)``), in ``[1, n]``.
        mu: centre of the Gaussian over ranks, in ``[0, n - 1]`` (0 = most concentrated).
        sigma: its width in rank units (default 1000, GAIN-RL's start value).
        seed: the sampler's seed (the subset is its epoch-0 draw).

    Attributes:
        selected: sorted indices of the chosen subset (``np.ndarray`` of int64).
        sampler: the :class:`GainSampler` that drew it; ``rank``: each sample's rank.
        mu, sigma, subset_size, seed, y_axis: the controls (set ``.value`` to drive them).
        draw_button: a new draw (seed + 1); export_button and path: write :meth:`export`.
        figure: the scatter; ``figure.data[0]`` all samples, ``[1]`` the chosen subset,
            ``[2]`` the sample shown in ``details``; each point's ``customdata`` is its index.
        hist_figure: score histograms of all samples (``data[0]``) and of the subset (``data[1]``).
        details: HTML pane with the shown sample's text, score and rank.
    """

    def __init__(self, scores, texts: Sequence[str] | None = None, losses=None, grad_norms=None,
                 subset_size: int | None = None, mu: float = 0.0, sigma: float | None = None,
                 seed: int = 0):
        self.scores = _vector("scores", scores, None)
        n = self.n = int(self.scores.size)
        if n == 0:
            raise ValueError("scores is empty; pass one score per sample")
        self.texts = None if texts is None else [str(t) for t in texts]
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"texts has {len(self.texts)} entries but scores has {n}; pass one "
                             "text per sample, in the order of scores")
        self.losses = None if losses is None else _vector("losses", losses, n)
        self.grad_norms = None if grad_norms is None else _vector("grad_norms", grad_norms, n)
        if subset_size is None:
            subset_size = max(1, math.ceil(n / 10))
        if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)) \
                or not 1 <= subset_size <= n:
            raise ValueError(f"subset_size must be an integer in [1, {n}] (the number of samples), "
                             f"got {subset_size!r}")
        try:
            mu = float(mu)
        except (TypeError, ValueError):
            mu = math.nan
        if not 0.0 <= mu <= max(n - 1, 0):
            raise ValueError(f"mu must be a rank in [0, {n - 1}] (0 = most concentrated), got {mu!r}")
        sigma = DEFAULT_SIGMA if sigma is None else sigma
        try:
            sigma = float(sigma)
        except (TypeError, ValueError):
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0 (rank units), got {sigma!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        # validates the scores (finite) and gives the ranking
        self.sampler = GainSampler(self.scores, int(subset_size), mu=mu, sigma=sigma, seed=int(seed))
        self.rank = self.sampler.rank.numpy()
        self.selected = np.zeros(0, dtype=np.int64)
        self.shown: int | None = None

        # ---- controls
        wide = W.Layout(width="420px")
        self.mu = W.FloatSlider(value=mu, min=0.0, max=float(max(n - 1, 1)), step=1.0, description="centre mu",
                                readout_format=".1f", continuous_update=False, layout=wide,
                                style={"description_width": "90px"})
        lo = min(-2.0, math.floor(math.log10(sigma)))
        hi = max(3.0, math.ceil(math.log10(n)) + 1.0, math.ceil(math.log10(sigma)))
        self.sigma = W.FloatLogSlider(value=sigma, base=10, min=lo, max=hi, step=0.05,
                                      description="width sigma", readout_format=".3g",
                                      continuous_update=False, layout=wide,
                                      style={"description_width": "90px"})
        self.subset_size = W.IntSlider(value=int(subset_size), min=1, max=n, description="subset size",
                                       continuous_update=False, layout=wide,
                                       style={"description_width": "90px"})
        self.seed = W.BoundedIntText(value=int(seed), min=0, max=2**31 - 1, description="seed",
                                     layout=W.Layout(width="160px"), style={"description_width": "40px"})
        self.draw_button = W.Button(description="draw", icon="random", button_style="primary",
                                    tooltip="a new draw (seed + 1)", layout=W.Layout(width="90px"))
        options = [(_Y_LABELS[k], k) for k, v in (("loss", self.losses), ("grad_norm", self.grad_norms))
                   if v is not None] + [(_Y_LABELS["rank"], "rank")]
        self.y_axis = W.Dropdown(options=options, value=options[0][1], description="y axis",
                                 layout=W.Layout(width="320px"))
        self.summary = W.HTML()
        self.details = W.HTML("<i>click a point to see its sample</i>",
                              layout=W.Layout(width="100%", max_height="260px", overflow="auto"))
        self.path = W.Text(value="angle_subset.json", description="path", layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="export", icon="save", tooltip="write the chosen indices",
                                      layout=W.Layout(width="90px"))
        self.message = W.HTML()

        # ---- figures
        scatter = go.Scattergl if n >= _SCATTERGL_FROM else go.Scatter
        fig = go.Figure()
        fig.add_trace(scatter(x=[], y=[], mode="markers", name="all samples",
                              marker=dict(color="#b0b0b0", size=5, opacity=0.6),
                              hovertemplate="#%{customdata}<br>score %{x:.4g}<br>y %{y:.4g}<extra></extra>"))
        fig.add_trace(scatter(x=[], y=[], mode="markers", name="chosen subset",
                              marker=dict(color=plots.COLORS[1 % len(plots.COLORS)], size=8, symbol="diamond",
                                          line=dict(width=0.5, color="black")),
                              hovertemplate="#%{customdata} (chosen)<br>score %{x:.4g}<br>y %{y:.4g}<extra></extra>"))
        fig.add_trace(scatter(x=[], y=[], mode="markers", name="shown", hoverinfo="skip",
                              marker=dict(size=16, symbol="circle-open", color="black", line=dict(width=2))))
        fig.update_layout(height=420, template="plotly_white", margin=dict(l=60, r=20, t=40, b=40),
                          xaxis_title="angle concentration score", title="samples (click one to read it)",
                          legend=dict(orientation="h", y=-0.15))
        self.figure = go.FigureWidget(fig)
        for trace in self.figure.data[:2]:
            trace.on_click(self._on_click)
        hist = go.Figure()
        hist.add_histogram(x=self.scores, name="all samples", bingroup=1, marker_color="#b0b0b0")
        hist.add_histogram(x=[], name="chosen subset", bingroup=1, opacity=0.75,
                           marker_color=plots.COLORS[1 % len(plots.COLORS)])
        hist.update_layout(height=300, template="plotly_white", barmode="overlay", xaxis_title="score",
                           yaxis_title="samples", margin=dict(l=60, r=20, t=40, b=40),
                           title="score histogram", legend=dict(orientation="h", y=-0.25))
        self.hist_figure = go.FigureWidget(hist)

        for w in (self.mu, self.sigma, self.subset_size, self.seed):
            w.observe(lambda _change: self.draw(), "value")
        self.y_axis.observe(lambda _change: self._draw_y(), "value")
        self.draw_button.on_click(lambda _: self.new_draw())
        self.export_button.on_click(lambda _: self._on_export())

        controls = W.VBox([W.HBox([self.mu, self.sigma]),
                           W.HBox([self.subset_size, self.seed, self.draw_button]),
                           W.HBox([self.y_axis, self.summary], layout=W.Layout(gap="20px"))])
        super().__init__([controls, self.figure,
                          W.HBox([self.hist_figure, self.details]),
                          W.HBox([self.path, self.export_button, self.message])])
        self._draw_y()
        self.draw()

    # ------------------------------------------------------------------ public API
    def draw(self) -> np.ndarray:
        """Draw the subset from the controls' current values and redraw (runs on every control change).

        The subset is epoch 0 of ``GainSampler(scores, subset_size, mu=mu, sigma=sigma, seed=seed)``.
        Returns :attr:`selected`.
        """
        self.sampler = GainSampler(self.scores, int(self.subset_size.value), mu=float(self.mu.value),
                                   sigma=float(self.sigma.value), seed=int(self.seed.value))
        self.selected = self.sampler.subset()
        sel = self.selected
        y = self._y()
        with self.figure.batch_update():
            chosen = self.figure.data[1]
            chosen.x, chosen.y, chosen.customdata = self.scores[sel], y[sel], sel
        with self.hist_figure.batch_update():
            self.hist_figure.data[1].x = self.scores[sel]
        ranks = self.rank[sel]
        self.summary.value = (f"<b>{sel.size}</b> of {self.n} samples chosen; ranks "
                              f"{int(ranks.min())} to {int(ranks.max())}")
        if self.shown is not None:
            self.show(self.shown)
        return self.selected

    def new_draw(self) -> np.ndarray:
        """A fresh draw with the same mu, sigma and size: the seed goes up by one (the "draw" button)."""
        self.seed.value = int(self.seed.value) + 1     # the seed's observer redraws
        return self.selected

    def show(self, index: int) -> None:
        """Show sample ``index``'s text, score and rank in :attr:`details` (what clicking it does)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n:
            raise ValueError(f"index must be a sample index in [0, {self.n - 1}], got {index!r}")
        i = self.shown = int(index)
        rows = [f"<b>sample #{i}</b>", f"score {self.scores[i]:.6g}",
                f"rank {int(self.rank[i])} of {self.n} (0 = most concentrated)"]
        if self.losses is not None:
            rows.append(f"loss {self.losses[i]:.6g}")
        if self.grad_norms is not None:
            rows.append(f"gradient norm {self.grad_norms[i]:.6g}")
        rows.append("in the chosen subset" if i in set(self.selected.tolist()) else "not chosen")
        text = "<i>(no texts given)</i>" if self.texts is None else (
            "<pre style='white-space:pre-wrap;margin:4px 0'>" + html.escape(self.texts[i]) + "</pre>")
        self.details.value = " &middot; ".join(rows) + "<br>" + text
        with self.figure.batch_update():
            t = self.figure.data[2]
            t.x, t.y, t.customdata = [self.scores[i]], [self._y()[i]], [i]

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """Write the chosen indices and the sampler settings as JSON (atomically); returns the path.

        The file holds ``{"indices": [...], "mu": ..., "sigma": ..., "subset_size": ..., "seed": ...}``
        (indices sorted). ``path`` defaults to the path box's value.
        """
        path = self.path.value if path is None else path
        if not str(path).strip():
            raise ValueError("export needs a file path; type one into the path box or pass path=")
        path = Path(path)
        write_json_atomic(path, {"indices": [int(i) for i in self.selected], "mu": float(self.mu.value),
                                 "sigma": float(self.sigma.value), "subset_size": int(self.subset_size.value),
                                 "seed": int(self.seed.value)})
        return path

    # ------------------------------------------------------------------ internals
    def _y(self) -> np.ndarray:
        key = self.y_axis.value
        if key == "loss":
            return self.losses
        if key == "grad_norm":
            return self.grad_norms
        return self.rank

    def _draw_y(self) -> None:
        y = self._y()
        with self.figure.batch_update():
            everyone = self.figure.data[0]
            everyone.x, everyone.y, everyone.customdata = self.scores, y, np.arange(self.n)
            self.figure.data[1].y = y[self.selected]
            if self.shown is not None:
                self.figure.data[2].y = [y[self.shown]]
            self.figure.layout.yaxis.title.text = _Y_LABELS[self.y_axis.value]

    def _on_click(self, trace, points, _selector=None) -> None:
        if not points.point_inds:                      # plotly calls every trace's handler
            return
        self.show(int(trace.customdata[points.point_inds[0]]))

    def _on_export(self) -> None:
        try:
            path = self.export()
        except (ValueError, OSError) as exc:
            self.message.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return
        self.message.value = f"wrote {self.selected.size} indices to <code>{html.escape(str(path))}</code>"
