"""``SparsityInspector``: where a fine-tune changed the weights, at any tolerance, in a notebook.

A thin view over :class:`workbench.sparsity.SparsityDiff`: the heatmap is ``diff.grid(atol=...)`` or
``diff.grid(rtol=...)`` (layers x matrix types, recomputed from the diff's cached histograms, the checkpoints
are not read again), the drill-down is ``diff.detail(name, atol=...)`` at the slider's tolerance (per-row /
per-column sparsity, recounted at that atol from the checkpoint files when they are still there, else labelled
with the diff's own atol, and the singular values of the update) and the overlap panel is
``workbench.sparsity.overlap(diff, other)``. No maths lives here.

Example:
    >>> import torch
    >>> from workbench.sparsity import diff_checkpoints
    >>> from workbench.sparsity.diff import snap_tolerance
    >>> from workbench.widgets import SparsityInspector
    >>> base = {f"model.layers.{i}.self_attn.q_proj.weight": torch.zeros(4, 4) for i in range(2)}
    >>> tuned = {k: v + torch.eye(4) * 1e-3 for k, v in base.items()}
    >>> w = SparsityInspector(diff_checkpoints(base, tuned))
    >>> [list(row) for row in w.figure.data[0].z]        # 12 of 16 entries unchanged at atol 1e-05
    [[0.75], [0.75]]
    >>> w.tolerance.value = snap_tolerance(0.01)          # what a slider drag does
    >>> [list(row) for row in w.figure.data[0].z]
    [[1.0], [1.0]]
    >>> w  # doctest: +SKIP
"""
from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.sparsity import SparsityDiff, overlap, snap_tolerance

__all__ = ["SparsityInspector"]


def _label(value: float) -> str:
    """Slider readout: 0, 1e-05, 1.3e-05, ..., 1e-04 (two significant digits, always with an exponent)."""
    return "0" if value == 0 else f"{value:.1e}".replace(".0e", "e")


def _short(name: str) -> str:
    return name.replace("model.", "").replace(".weight", "").replace("layers.", "L")


class SparsityInspector(W.VBox):
    """Heatmap of update sparsity (layers x matrix types) with a tolerance slider, drill-down and overlap.

    Args:
        diff: a :class:`~workbench.sparsity.SparsityDiff` (from ``diff_checkpoints`` or
            ``SparsityDiff.load``; it must carry the cached statistics).
        other: optional second diff against the same base (another fine-tune or seed); both made with
            ``keep_masks=True``; the overlap panel shows ``o1``/``o2`` per tensor next to chance.

    Attributes: ``figure`` (heatmap FigureWidget), ``detail_figure`` (row / column sparsity and singular
    values of the selected tensor), ``overlap_figure`` (None without ``other``), ``tolerance`` (slider over
    the tolerance grid), ``mode`` (``"atol"``: ``|delta| > tol``; ``"rtol"``: ``|delta| > tol * |base|``),
    ``tensor`` (dropdown of the drilled-down tensor), ``message`` (overall sparsity and notes).
    """

    def __init__(self, diff: SparsityDiff, other: SparsityDiff | None = None):
        if not isinstance(diff, SparsityDiff):
            raise ValueError(f"diff must be a SparsityDiff (from diff_checkpoints or SparsityDiff.load), got "
                             f"{type(diff).__name__}")
        if other is not None and not isinstance(other, SparsityDiff):
            raise ValueError(f"other must be None or a SparsityDiff of a second fine-tune, got "
                             f"{type(other).__name__}")
        if not diff.stats:
            raise ValueError("this diff holds no cached statistics (saved by an older version); re-run "
                             "diff_checkpoints on the checkpoints to inspect it")
        self.diff = diff
        self.other = other
        self._cells = diff.cells()
        self._updating = False

        self.mode = W.ToggleButtons(options=[("abs |delta| > tol", "atol"), ("rel |delta| > tol*|w|", "rtol")],
                                    value="atol", description="changed if")
        self.tolerance = W.SelectionSlider(options=self._options("atol"), value=diff.atol,
                                           description="tolerance", continuous_update=False,
                                           layout=W.Layout(width="520px"))
        self.tensor = W.Dropdown(description="tensor", options=[t["name"] for t in diff.tensors],
                                 layout=W.Layout(width="520px"))
        self.message = W.HTML()

        self.figure = go.FigureWidget(go.Heatmap(z=[[None]], x=[""], y=[""], zmin=0, zmax=1,
                                                 colorscale="Viridis", colorbar=dict(title="sparsity"),
                                                 hovertemplate="layer %{y}, %{x}: %{z:.4f}<extra></extra>"))
        self.figure.update_layout(height=420, margin=dict(l=60, r=20, t=40, b=40),
                                  xaxis_title="matrix type", yaxis_title="layer",
                                  yaxis=dict(autorange="reversed", type="category"),
                                  xaxis=dict(type="category"))
        self.detail_figure = go.FigureWidget(make_subplots(
            rows=1, cols=3, subplot_titles=("row sparsity", "column sparsity", "singular values of the update")))
        for col, color in ((1, "#636efa"), (2, "#ef553b")):
            self.detail_figure.add_trace(go.Bar(x=[], y=[], marker_color=color, showlegend=False), row=1, col=col)
        self.detail_figure.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", showlegend=False), row=1, col=3)
        self.detail_figure.update_yaxes(type="log", row=1, col=3)
        self.detail_figure.update_layout(height=320, margin=dict(l=40, r=20, t=60, b=40))
        self.detail_figure.update_xaxes(title_text="row", row=1, col=1)
        self.detail_figure.update_xaxes(title_text="column", row=1, col=2)
        self.detail_figure.update_xaxes(title_text="index", row=1, col=3)

        self.overlap_figure = None
        children = [W.HBox([self.mode]), self.tolerance, self.message, self.figure, self.tensor,
                    self.detail_figure]
        if other is not None:
            self.overlap = overlap(diff, other)
            self.overlap_figure = go.FigureWidget()
            self._draw_overlap()
            children.append(self.overlap_figure)

        self.mode.observe(self._on_mode, "value")
        self.tolerance.observe(lambda _: self._redraw(), "value")
        self.tensor.observe(lambda ch: self._show_detail(ch["new"]), "value")
        self.figure.data[0].on_click(self._on_click)
        super().__init__(children)
        self._redraw()

    # ------------------------------------------------------------------ public API
    def select(self, name: str) -> None:
        """Drill down into tensor ``name`` (what a click on its heatmap cell does)."""
        if name not in self.tensor.options:
            raise ValueError(f"no tensor {name!r} in this diff; pick one of e.g. {list(self.tensor.options)[:5]}")
        if self.tensor.value == name:
            self._show_detail(name)
        else:
            self.tensor.value = name  # observer redraws

    def click(self, layer, column: str) -> str:
        """Drill down into the heatmap cell (``layer``, ``column``); returns the tensor shown (the first 2-D
        one of the cell, else its first)."""
        names = self._cells.get((layer, column))
        if not names:
            raise ValueError(f"no tensor at layer {layer!r}, column {column!r}; cells are e.g. "
                             f"{list(self._cells)[:5]}")
        shapes = {t["name"]: t["shape"] for t in self.diff.tensors}
        name = next((n for n in names if len(shapes[n]) == 2), names[0])
        self.select(name)
        return name

    def set_tolerance(self, value: float) -> float:
        """Move the slider to ``value`` if it is an option, else to the grid edge ``snap_tolerance`` picks
        (the diff's own tolerance stands in for the grid edge next to it); returns the value set."""
        values = [v for _, v in self.tolerance.options]
        target = value if value in values else snap_tolerance(value)
        if target not in values:  # the grid edge next to the diff's own tolerance is not offered
            target = self.diff.atol if self.mode.value == "atol" else self.diff.rtol
        self.tolerance.value = target
        return target

    @property
    def frame(self):
        """The pandas table drawn in the heatmap (``diff.grid`` at the current tolerance)."""
        return self.diff.grid(**{self.mode.value: self.tolerance.value})

    # ------------------------------------------------------------------ internals
    def _options(self, mode: str) -> list:
        own = self.diff.atol if mode == "atol" else self.diff.rtol
        grid = [e for e in self.diff.grid_edges if own is None or abs(e / own - 1) > 0.01]  # own value, exact
        values = sorted({0.0, *grid, *([own] if own is not None else [])})
        return [(_label(v), v) for v in values]

    def _on_mode(self, change) -> None:
        mode = change["new"]
        current = self.tolerance.value
        own = self.diff.atol if mode == "atol" else self.diff.rtol
        self._updating = True
        try:
            self.tolerance.options = self._options(mode)
            self.tolerance.value = own if own is not None else snap_tolerance(current)  # a grid edge
        finally:
            self._updating = False
        self._redraw()

    def _redraw(self) -> None:
        if self._updating:
            return
        mode, tol = self.mode.value, self.tolerance.value
        frame = self.diff.grid(**{mode: tol})
        z = [[None if v != v else float(v) for v in row] for row in frame.to_numpy(dtype=float)]
        with self.figure.batch_update():
            h = self.figure.data[0]
            h.z, h.x, h.y = z, list(frame.columns), [str(i) for i in frame.index]
            self.figure.layout.title = f"update sparsity, changed if |delta| > {_label(tol)}" + \
                (" x |base|" if mode == "rtol" else "")
        overall = self.diff.sparsity_at(**{mode: tol})["overall"]
        dtypes = sorted({t["dtype"] for t in self.diff.tensors})
        self.message.value = (f"overall sparsity <b>{overall:.4f}</b> at {mode}={_label(tol)} "
                              f"({self.diff.overall['numel']:,} entries, dtype {', '.join(dtypes)})")
        if self.tensor.value is not None:  # the drill-down follows the slider
            self._show_detail(self.tensor.value)

    def _on_click(self, trace, points, state) -> None:
        if not points.point_inds:
            return
        r, c = points.point_inds[0]
        layer = trace.y[r]
        layer = int(layer) if layer != "other" else "other"
        self.click(layer, trace.x[c])

    def _show_detail(self, name: str) -> None:
        mode, tol = self.mode.value, self.tolerance.value
        d = self.diff.detail(name, **{mode: tol})
        rows, cols, sv = self.detail_figure.data
        with self.detail_figure.batch_update():
            if d["row_sparsity"] is None:
                rows.x, rows.y, cols.x, cols.y = [], [], [], []
            else:
                rows.x, rows.y = list(range(len(d["row_sparsity"]))), d["row_sparsity"].tolist()
                cols.x, cols.y = list(range(len(d["col_sparsity"]))), d["col_sparsity"].tolist()
            if d["svals"] is None:
                sv.x, sv.y = [], []
            else:
                sv.x, sv.y = list(range(len(d["svals"]))), d["svals"].tolist()
            r = d["row"]
            rank = "not computed (tensor above max_rank_numel)" if r["rank"] is None and r["rank_max"] else \
                f"rank {r['rank']} of {r['rank_max']}" if r["rank"] is not None else "1-D tensor"
            self.detail_figure.layout.title = f"{name}: sparsity {d['sparsity']:.4f} at {mode}={_label(tol)}, {rank}"
            rows_at = "" if d["tolerance"].get("atol") == d["rows_atol"] else \
                f" at atol={_label(d['rows_atol'])} (the diff's own; re-run the diff at {mode}={_label(tol)})"
            for ann, what in zip(self.detail_figure.layout.annotations, ("row sparsity", "column sparsity")):
                ann.text = what + rows_at

    def _draw_overlap(self) -> None:
        rows = self.overlap["tensors"]
        x = [_short(r["name"]) for r in rows]

        def vals(key):
            return [r[key] for r in rows]

        with self.overlap_figure.batch_update():
            self.overlap_figure.add_trace(go.Bar(x=x, y=vals("o1"), name="o1 = |A&B|/|A|", marker_color="#636efa"))
            self.overlap_figure.add_trace(go.Scatter(x=x, y=vals("o1_chance"), mode="markers", name="o1 chance",
                                                     marker=dict(symbol="line-ew-open", size=14, color="#636efa")))
            self.overlap_figure.add_trace(go.Bar(x=x, y=vals("o2"), name="o2 = |A&B|/|B|", marker_color="#ef553b"))
            self.overlap_figure.add_trace(go.Scatter(x=x, y=vals("o2_chance"), mode="markers", name="o2 chance",
                                                     marker=dict(symbol="line-ew-open", size=14, color="#ef553b")))
            o = self.overlap["overall"]
            f = (lambda v: "n/a" if v is None else f"{v:.3f}")
            self.overlap_figure.update_layout(
                barmode="group", height=360, yaxis=dict(range=[0, 1], title="overlap"),
                title=f"overlap of updated entries: o1 {f(o['o1'])} (chance {f(o['o1_chance'])}), "
                      f"o2 {f(o['o2'])} (chance {f(o['o2_chance'])})",
                margin=dict(l=40, r=20, t=60, b=120))
