"""The dashboard's data-selection and sparsity tabs (panel views; see :mod:`workbench.widgets.dashboard`).

* :class:`AnglesTab`: score the prompts of the generated arithmetic task by angle concentration
  (:func:`workbench.data.tasks.prompt_angles`, with the bundled pretrained model), see score
  against loss and the score histogram, move the GAIN sampler's centre/width/size and see the
  chosen subset (:meth:`workbench.data.GainSampler.subset`) highlighted, click a point to read the
  sample, export the indices to the workspace (``selections/NAME.json``).
* :class:`SparsityTab`: diff two checkpoints (:func:`workbench.sparsity.diff_checkpoints`; the
  bundled pretrained model and the runs of the workspace are offered; a typed path must lie in the
  workspace's runs, the bundled assets or a ``--data-dir`` folder: :meth:`Workspace.checkpoint_path`), keep the diff in
  ``diffs/NAME.json``, and look at it: heatmap of sparsity (layers x matrix types) at any absolute
  or relative tolerance from the cached statistics (:meth:`SparsityDiff.grid`), drill-down on a
  cell (row/column sparsity, singular values: :meth:`SparsityDiff.detail`).
* :class:`OwnRunFit` (a section of the Schedule tab): fit a loss law to a user's own run - a log
  file or folder typed as a path (the workspace's runs and uploads, the bundled runs, ``--data-dir``
  folders: :meth:`Workspace.log_path`) or uploaded (CSV/JSONL/JSON, size-capped, kept as
  ``uploads/NAME``: :meth:`Workspace.save_upload`) - read with :func:`workbench.curves.read_runs`
  (HF output folders, TensorBoard logdirs, W&B exports, Lightning ``metrics.csv``, run logs), and
  draw the law and its prediction through :func:`workbench.livefit.forecast`.

Example:
    >>> import tempfile
    >>> from workbench.workspace import Workspace
    >>> tab = SparsityTab(Workspace(tempfile.mkdtemp()))
    >>> tab.diffs.options
    []
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import panel as pn

from workbench.widgets.dashboard import LIMITS, _html_message, _message, bounded, esc
from workbench.workspace import Workspace

__all__ = ["AnglesTab", "SparsityTab", "OwnRunFit"]


def _layout(fig_height: int, **kw) -> dict:
    return dict(template="plotly_white", height=fig_height, margin=dict(l=60, r=20, t=40, b=40), **kw)


# ====================================================================== data selection
class AnglesTab:
    """Angle concentration of generated task prompts and the GAIN sampler's subset, live."""

    def __init__(self, ws: Workspace, n: int = 256):
        self.ws = ws
        self.n_examples = pn.widgets.IntInput(label="prompts to score", value=n, start=LIMITS["n_examples"][0],
                                              end=LIMITS["n_examples"][1], step=64)
        self.task_seed = pn.widgets.IntInput(label="task seed", value=0, start=0, end=LIMITS["seed"][1])
        self.score_button = pn.widgets.Button(label="Score prompts", color="primary")
        self.mu = pn.widgets.IntSlider(label="centre mu (rank; 0 = most concentrated)", start=0, end=max(1, n - 1),
                                       value=0)
        self.sigma = pn.widgets.DiscreteSlider(
            label="width sigma (ranks)", options={f"{v:g}": float(v) for v in (0.5, 1, 2, 5, 10, 20, 50, 100, 200,
                                                                                 500, 1000, 2000, 5000)}, value=50.0)
        self.subset_size = pn.widgets.IntSlider(label="subset size", start=1, end=n, value=max(1, n // 10))
        self.seed = pn.widgets.IntInput(label="draw seed", value=0, start=0, end=LIMITS["seed"][1])
        self.y_axis = pn.widgets.RadioButtonGroup(label="y", options=["loss", "rank"], value="loss")
        self.name = pn.widgets.TextInput(label="export as", placeholder="e.g. top-concentrated")
        self.export_button = pn.widgets.Button(label="Export indices")
        self.status = pn.pane.HTML(_html_message("press <b>Score prompts</b>: the bundled pretrained model "
                                                 "scores the prompts (a few seconds)"), sizing_mode="stretch_width")
        self.sample = pn.pane.HTML("", sizing_mode="stretch_width")
        self.scatter = pn.pane.Plotly({"data": [], "layout": _layout(420)}, sizing_mode="stretch_width",
                                      height=430, config={"displaylogo": False})
        self.hist = pn.pane.Plotly({"data": [], "layout": _layout(260)}, sizing_mode="stretch_width", height=270,
                                   config={"displaylogo": False})
        self.scores = self.losses = self.rank = self.examples = None
        self.selected = np.zeros(0, dtype=np.int64)
        self.score_button.on_click(lambda _e: self.score())
        self.export_button.on_click(lambda _e: self.export())
        for w in (self.mu, self.sigma, self.subset_size, self.seed, self.y_axis):
            w.param.watch(lambda _e: self.draw(), "value")
        self.scatter.param.watch(self._clicked, "click_data")
        self.layout = pn.Row(
            pn.Column(self.n_examples, self.task_seed, self.score_button, pn.layout.Divider(), self.mu, self.sigma,
                      self.subset_size, self.seed, self.y_axis, pn.layout.Divider(), self.name, self.export_button,
                      self.status, width=340),
            pn.Column(self.scatter, pn.Row(self.hist, self.sample, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

    def score(self) -> None:
        """Generate the task's prompts and score them (angle concentration and answer loss)."""
        from workbench import assets
        from workbench.data.tasks import arithmetic_examples, per_example_losses, prompt_angles
        from workbench.models import build_model

        try:
            n = bounded(self.n_examples, "n_examples")
            task_seed = bounded(self.task_seed, "seed")
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return
        self.status.object = _message(f"scoring {n} prompts ...")
        model = build_model(assets.pretrained_dir())
        self.examples = arithmetic_examples(n, seed=task_seed)
        self.scores = prompt_angles(model, self.examples)["score"].double().numpy()
        self.losses = per_example_losses(model, self.examples).double().numpy()
        from workbench.data import GainSampler

        self.rank = GainSampler(self.scores, 1).rank.numpy()
        self.mu.end = max(1, n - 1)
        self.subset_size.end = n
        self.mu.value = min(self.mu.value, n - 1)
        self.subset_size.value = min(self.subset_size.value, n)
        self.status.object = _message(f"scored {n} prompts with the bundled pretrained model", "ok")
        self.draw()

    def draw(self) -> None:
        """Draw the subset from the controls (epoch 0 of a GainSampler) and redraw both plots."""
        from workbench.data import GainSampler

        if self.scores is None:
            return
        try:
            size = bounded(self.subset_size, "subset_size", high=self.scores.size)
            mu = bounded(self.mu, "rank", high=self.scores.size - 1)
            seed = bounded(self.seed, "seed")
            if self.sigma.value not in self.sigma.options.values():
                raise ValueError("width sigma must be one of the slider's values")
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return
        sampler = GainSampler(self.scores, size, mu=float(mu), sigma=float(self.sigma.value), seed=seed)
        sel = self.selected = sampler.subset()
        y = self.losses if self.y_axis.value == "loss" else self.rank.astype(float)
        ids = np.arange(self.scores.size)
        self.scatter.object = {
            "data": [dict(type="scattergl" if self.scores.size > 5000 else "scatter", x=self.scores, y=y,
                          customdata=ids, mode="markers", name="all prompts",
                          marker=dict(color="#9aa5b1", size=6)),
                     dict(type="scatter", x=self.scores[sel], y=y[sel], customdata=sel, mode="markers",
                          name=f"chosen ({sel.size})", marker=dict(color="#ef553b", size=9, symbol="diamond"))],
            "layout": _layout(420, xaxis_title="angle concentration (intra + 8 x inter)",
                              yaxis_title="answer loss" if self.y_axis.value == "loss" else "rank",
                              uirevision="angles", legend=dict(orientation="h", y=1.08))}
        bins = dict(start=float(self.scores.min()), end=float(self.scores.max()) + 1e-12,
                    size=float(np.ptp(self.scores)) / 30 or 1.0)
        self.hist.object = {
            "data": [dict(type="histogram", x=self.scores, xbins=bins, name="all", marker=dict(color="#9aa5b1")),
                     dict(type="histogram", x=self.scores[sel], xbins=bins, name="chosen",
                          marker=dict(color="#ef553b"))],
            "layout": _layout(260, barmode="overlay", xaxis_title="score", uirevision="angles-hist",
                              showlegend=False)}
        r = self.rank[sel]
        self.status.object = _html_message(f"<b>{sel.size}</b> of {self.scores.size} chosen, ranks {int(r.min())} "
                                           f"to {int(r.max())}")

    def show(self, index: int) -> None:
        """Show one sample's text, score, rank and loss."""
        i = int(index)
        if self.examples is None or not 0 <= i < len(self.examples):
            return
        e = self.examples[i]
        chosen = "chosen" if i in set(self.selected.tolist()) else "not chosen"
        self.sample.object = (f"<b>#{i}</b> score {self.scores[i]:.4f} &middot; rank {int(self.rank[i])} &middot; "
                              f"loss {self.losses[i]:.3f} &middot; {chosen}<pre>"
                              f"{esc(e['text'])}</pre>")

    def _clicked(self, event) -> None:
        pts = (event.new or {}).get("points") or []
        if pts and pts[0].get("customdata") is not None:
            self.show(int(pts[0]["customdata"]))

    def export(self, name: str | None = None) -> Path | None:
        """Write the chosen indices and the sampler settings to ``selections/NAME.json``."""
        if self.scores is None:
            self.status.object = _message("score the prompts first", "error")
            return None
        try:
            name = self.ws.unique_name("selections", (name or self.name.value or "").strip() or "selection")
            path = self.ws.save_json("selections", name, {
                "indices": [int(i) for i in self.selected], "mu": float(self.mu.value),
                "sigma": float(self.sigma.value), "subset_size": int(self.subset_size.value),
                "seed": int(self.seed.value), "task": {"name": "arithmetic", "n": int(self.scores.size),
                                                       "seed": int(self.task_seed.value)}})
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return None
        self.status.object = _message(f"wrote selections/{path.name}", "ok")
        return path


# ====================================================================== sparsity
class SparsityTab:
    """Diff two checkpoints and inspect the update's sparsity at any tolerance."""

    PRETRAINED = "bundled pretrained model"

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.base = pn.widgets.Select(label="base checkpoint", options=self._sources())
        self.tuned = pn.widgets.Select(label="tuned checkpoint", options=self._sources())
        self.base_path = pn.widgets.TextInput(label="... or base path", placeholder="model dir / .safetensors")
        self.tuned_path = pn.widgets.TextInput(label="... or tuned path", placeholder="model dir / .safetensors")
        self.atol = pn.widgets.DiscreteSlider(label="diff atol", options=_tol_options(), value=1e-5)
        self.name = pn.widgets.TextInput(label="save diff as", placeholder="e.g. sft-vs-base")
        self.intersect = pn.widgets.Checkbox(label="only tensors in both (skip the rest)", value=False)
        self.diff_button = pn.widgets.Button(label="Diff checkpoints", color="primary")
        self.diffs = pn.widgets.Select(label="show diff", options=ws.names("diffs"))
        self.mode = pn.widgets.RadioButtonGroup(label="tolerance", options=["atol", "rtol"], value="atol")
        self.tolerance = pn.widgets.DiscreteSlider(label="changed if |delta| >", options=_tol_options(),
                                                   value=1e-5)
        self.cell = pn.widgets.Select(label="drill down", options=[])
        self.status = pn.pane.HTML("", sizing_mode="stretch_width")
        self.heatmap = pn.pane.Plotly({"data": [], "layout": _layout(420)}, sizing_mode="stretch_width", height=430,
                                      config={"displaylogo": False})
        self.detail = pn.pane.Plotly({"data": [], "layout": _layout(320)}, sizing_mode="stretch_width", height=330,
                                     config={"displaylogo": False})
        self.diff = None
        self.diff_button.on_click(lambda _e: self.compute())
        self.diffs.param.watch(lambda _e: self.load(), "value")
        self.mode.param.watch(lambda _e: self.redraw(), "value")
        self.tolerance.param.watch(lambda _e: self.redraw(), "value")
        self.cell.param.watch(lambda e: e.new and self.select(e.new), "value")
        self.heatmap.param.watch(self._clicked, "click_data")
        self.layout = pn.Row(
            pn.Column(self.base, self.base_path, self.tuned, self.tuned_path, self.atol, self.name, self.intersect,
                      self.diff_button, pn.layout.Divider(), self.diffs, self.mode, self.tolerance, self.cell,
                      self.status, width=340),
            pn.Column(self.heatmap, self.detail, sizing_mode="stretch_width"), sizing_mode="stretch_width")
        if self.diffs.options:
            self.load()

    def _sources(self) -> list[str]:
        runs = [f"run: {n}" for n in self.ws.names("runs") if (self.ws.run_dir(n) / "model.safetensors").exists()]
        return [self.PRETRAINED] + runs

    def _resolve(self, choice: str, typed: str, what: str = "path") -> str:
        """The checkpoint a choice or a typed path names: only workspace runs, the bundled assets and
        ``--data-dir`` folders (the same error whether a refused path exists or not)."""
        if (typed or "").strip():
            return self.ws.checkpoint_path(typed, what)
        if choice == self.PRETRAINED:
            from workbench import assets

            return str(assets.pretrained_dir())
        if choice not in self._sources():
            raise ValueError(f"{what}: choose one of the listed checkpoints")
        return str(self.ws.run_dir(choice.removeprefix("run: ")) / "model.safetensors")

    def refresh(self) -> None:
        """Pick up new runs and diffs written by other sessions (the server calls this periodically)."""
        src = self._sources()
        for w in (self.base, self.tuned):
            if list(w.options) != src:
                w.options = src
        names = self.ws.names("diffs")
        if list(self.diffs.options) != names:
            self.diffs.options = names

    def compute(self, base: str | None = None, tuned: str | None = None, name: str | None = None):
        """Diff ``base`` and ``tuned`` (paths; default: the form), save it, and show it."""
        from workbench.sparsity import diff_checkpoints

        try:
            base = base or self._resolve(self.base.value, self.base_path.value, "base path")
            tuned = tuned or self._resolve(self.tuned.value, self.tuned_path.value, "tuned path")
            if self.atol.value not in self.atol.options.values():
                raise ValueError("diff atol must be one of the slider's values")
            name = self.ws.unique_name("diffs", (name or self.name.value or "").strip() or "diff")
            self.status.object = _message("diffing ...")
            d = diff_checkpoints(base, tuned, atol=float(self.atol.value), intersect=bool(self.intersect.value))
        except (ValueError, FileNotFoundError, OSError) as exc:
            hint = "" if self.intersect.value else "<br>(tick 'only tensors in both' to skip what does not line up)"
            self.status.object = _html_message(esc(_no_paths(str(exc), self.ws)).replace("\n", "<br>") + hint,
                                               "error")
            return None
        d.to_json(self.ws.path("diffs", name))
        self.diffs.options = self.ws.names("diffs")
        self.diffs.value = name       # loads and draws it
        if d.skipped:
            self.status.object += _html_message(f"<br>skipped {len(d.skipped)} tensor(s) not in both: "
                                                f"{esc(', '.join(d.skipped[:5]))}")
        return d

    def load(self) -> None:
        from workbench.sparsity import SparsityDiff

        if not self.diffs.value:
            return
        try:
            self.diff = SparsityDiff.load(self.ws.path("diffs", self.diffs.value))
        except (ValueError, OSError) as exc:
            self.status.object = _message(str(exc), "error")
            return
        self.cell.options = [t["name"] for t in self.diff.tensors]
        self.redraw()

    def redraw(self) -> None:
        if self.diff is None:
            return
        if self.mode.value not in ("atol", "rtol") or self.tolerance.value not in self.tolerance.options.values():
            self.status.object = _message("tolerance must be one of the slider's values", "error")
            return
        kw = {self.mode.value: float(self.tolerance.value)}
        try:
            frame = self.diff.grid(**kw)
            overall = self.diff.sparsity_at(**kw)["overall"]
        except ValueError as exc:   # e.g. a diff saved without cached statistics
            self.status.object = _message(str(exc), "error")
            return
        z = [[None if math.isnan(v) else float(v) for v in row] for row in frame.to_numpy(dtype=float)]
        self.heatmap.object = {
            "data": [dict(type="heatmap", z=z, x=list(frame.columns), y=[str(i) for i in frame.index],
                          zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="sparsity"),
                          hovertemplate="layer %{y}, %{x}: sparsity %{z:.4f}<extra></extra>")],
            "layout": _layout(420, title=f"update sparsity, changed if |delta| > {self.tolerance.value:.0e}"
                              + (" x |base|" if self.mode.value == "rtol" else ""),
                              yaxis=dict(title="layer", autorange="reversed", type="category"),
                              uirevision="sparsity")}
        dtypes = sorted({t["dtype"] for t in self.diff.tensors})
        self.status.object = _html_message(f"overall sparsity <b>{overall:.4f}</b> at {esc(self.mode.value)}="
                                           f"{self.tolerance.value:.0e} ({self.diff.overall['numel']:,} entries, "
                                           f"dtype {esc(', '.join(dtypes))})")
        if self.cell.value in self.cell.options:   # the drill-down follows the slider
            self.select(self.cell.value)

    def select(self, name: str) -> None:
        """Drill down into one tensor: row/column sparsity and the singular values of its update."""
        if self.diff is None or name not in {t["name"] for t in self.diff.tensors}:
            return
        mode, tol = self.mode.value, float(self.tolerance.value)
        d = self.diff.detail(name, **{mode: tol})
        own = d["tolerance"].get("atol") == d["rows_atol"]   # row/column counts at the slider's atol
        rows_at = "" if own else f" at atol={d['rows_atol']:.0e} (the diff's own)"
        data = []
        if d["row_sparsity"] is not None:
            data += [dict(type="scatter", y=d["row_sparsity"].tolist(), mode="lines", name="row sparsity" + rows_at),
                     dict(type="scatter", y=d["col_sparsity"].tolist(), mode="lines",
                          name="column sparsity" + rows_at)]
        if d["svals"] is not None:
            data.append(dict(type="scatter", y=np.asarray(d["svals"]).tolist(), mode="lines", name="singular values",
                             xaxis="x2", yaxis="y2"))
        r = d["row"]
        self.detail.object = {"data": data, "layout": _layout(
            320, title=f"{name}: sparsity {d['sparsity']:.4f} at {mode}={tol:.0e}"
                       + (" x |base|" if mode == "rtol" else "") + f", rank {r.get('rank')} of {r.get('rank_max')}",
            xaxis=dict(domain=[0, 0.45], title="row / column"), yaxis=dict(title="sparsity", range=[0, 1.02]),
            xaxis2=dict(domain=[0.55, 1], title="index"), yaxis2=dict(anchor="x2", type="log",
                                                                     title="singular value"))}
        if self.cell.value != name:
            self.cell.value = name

    def _clicked(self, event) -> None:
        pts = (event.new or {}).get("points") or []
        if not pts or self.diff is None:
            return
        layer, col = pts[0].get("y"), pts[0].get("x")
        key = (int(layer) if layer not in (None, "other") else "other", col)
        names = self.diff.cells().get(key)
        if names:
            self.select(names[0])


# ====================================================================== fit your own run
class OwnRunFit:
    """Fit a loss law to a user's own run (a typed path or an upload) and draw its prediction.

    Example:
        >>> import tempfile
        >>> from workbench.workspace import Workspace
        >>> own = OwnRunFit(Workspace(tempfile.mkdtemp()))
        >>> own.fit("runs/cosine").name                  # the bundled cosine run
        'cosine'
        >>> own.forecast.ok, own.fitted.info["curves"]
        (True, ['cosine'])
    """

    LAWS = ("annealing", "multipower")
    FIT_POINTS = 300          # points per curve the fit uses (bounded work per click)

    def __init__(self, ws: Workspace, law: str = "annealing", on_use=None):
        from workbench.workspace import UPLOAD_MAX_BYTES

        self.ws, self.on_use = ws, on_use      # on_use(fitted, name): the Schedule tab predicts with the fit
        self.path = pn.widgets.TextInput(label="your run: a log file or folder",
                                         placeholder="uploads/x.csv, runs/NAME, or a --data-dir path")
        self.upload = pn.widgets.FileInput(accept=".csv,.jsonl,.json", multiple=False)
        self.run = pn.widgets.Select(label="run (a folder with several)", options=[])
        self.law = pn.widgets.Select(label="loss law", options=list(self.LAWS), value=law)
        self.fit_button = pn.widgets.Button(label="Fit the law", color="primary")
        self.use_button = pn.widgets.Button(label="Predict the designed schedule with this fit", disabled=True,
                                            visible=on_use is not None)
        self.status = pn.pane.HTML(_message(f"type a path or upload a CSV / JSONL / JSON log (at most "
                                            f"{UPLOAD_MAX_BYTES // 2**20} MB); HF output folders, TensorBoard "
                                            "logdirs, W&B exports and Lightning metrics.csv are read as they are"),
                                   sizing_mode="stretch_width")
        self.plot = pn.pane.Plotly({"data": [], "layout": _layout(420)}, sizing_mode="stretch_width", height=430,
                                   config={"displaylogo": False})
        # the plot joins the page with the first fit (the other tabs' plots keep their place on the page)
        self.plot_area = pn.Column(sizing_mode="stretch_width")
        self.curve = self.fitted = self.forecast = None
        self.upload.param.watch(lambda _e: self.uploaded(), "value")
        self.fit_button.on_click(lambda _e: self.fit())
        self.use_button.on_click(lambda _e: self.use())
        self.layout = pn.Row(pn.Column(self.path, pn.pane.HTML("... or upload one:"), self.upload, self.run,
                                       self.law, self.fit_button, self.use_button, self.status, width=340),
                             self.plot_area, sizing_mode="stretch_width")

    def uploaded(self, filename: str | None = None, data: bytes | None = None):
        """Keep an upload (default: the FileInput's) as ``uploads/NAME`` and fit it; its name, or None."""
        filename = self.upload.filename if filename is None else filename
        data = self.upload.value if data is None else data
        if not data and not filename:
            return None
        try:
            saved = self.ws.save_upload(filename, data)
        except (ValueError, OSError) as exc:
            self.status.object = _message(_no_paths(str(exc), self.ws), "error")
            return None
        self.path.value = f"uploads/{saved.name}"
        self.run.options = []
        return saved.name if self.fit() is not None else None

    def fit(self, path: str | None = None, run: str | None = None):
        """Read the run at ``path`` (default: the form; only allowed folders), fit the chosen law to
        it and draw the observed losses, the law and its band; returns the curve, or None with a
        one-line message."""
        from workbench import laws
        from workbench.curves import describe_choices, read_runs, select_run

        try:
            if self.law.value not in self.LAWS:
                raise ValueError(f"loss law must be one of {', '.join(self.LAWS)}")
            real = self.ws.log_path(self.path.value if path is None else path, "run log path")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                runs = read_runs(real)
                names = [r.name for r in runs]
                if names != list(self.run.options):
                    self.run.options = names
                want = run if run is not None else self.run.value
                if want in names:
                    chosen = runs[names.index(want)]
                else:
                    try:
                        chosen = select_run(runs)          # the only run, or the folder's own log
                    except ValueError:
                        raise ValueError(f"this folder holds {len(runs)} runs ({', '.join(names)}): choose one in "
                                         "the 'run' list") from None
                curve = chosen.curve()
                fitted = laws.fit([curve], law=self.law.value, max_points=self.FIT_POINTS)
        except (ValueError, OSError) as exc:
            self.status.object = _message(_no_paths(str(exc).splitlines()[0] if str(exc) else repr(exc), self.ws),
                                          "error")
            self.use_button.disabled = self.fitted is None
            return None
        self.curve, self.fitted = curve, fitted
        self.plot.object = self._figure()
        if not self.plot_area.objects:
            self.plot_area.append(self.plot)
        self.use_button.disabled = False
        fc = self.forecast
        lines = [_message(f"{self.law.value} law fitted to {fitted.info.get('n_points', '?')} points of "
                          f"{curve.name}: " + ", ".join(f"{k} = {v:.4g}" for k, v in fitted.params.items()), "ok"),
                 _message(describe_choices(curve.meta["choices"]))]
        if fc.final is not None and fc.ok:
            lines.append(_message(f"predicted loss at step {int(fc.steps[-1])}: {fc.final:.4f} (observed "
                                  f"{float(curve.losses[-1]):.4f} at step {int(curve.steps[-1])})"))
        else:
            lines.append(_message("no trustworthy prediction: " + "; ".join(fc.problems), "warn"))
        lines += [_message("fit warning: " + w, "warn") for w in fitted.warnings]
        lines += [_message(_no_paths(str(w.message), self.ws), "warn") for w in caught
                  if issubclass(w.category, UserWarning)]
        self.status.object = "<br>".join(lines)
        return curve

    def use(self) -> None:
        """Hand the last fit to ``on_use`` (the Schedule tab then predicts the designed schedule with it)."""
        if self.fitted is None or self.on_use is None:
            self.status.object = _message("fit a run first", "error")
            return
        self.on_use(self.fitted, self.curve.name)

    def _figure(self) -> dict:
        """Observed losses after warmup, the law over the run's whole schedule and its band (what
        :func:`workbench.livefit.forecast` allows to be shown; grey and dotted outside the domain)."""
        from workbench import plots
        from workbench.livefit import LEVEL, forecast
        from workbench.widgets.dashboard import MAX_POINTS, OUT_OF_DOMAIN

        c, f = self.curve, self.fitted
        x = plots.display_steps(c.total_steps, MAX_POINTS)
        x = x[x >= c.warmup]
        fc = self.forecast = forecast(f, c, x, band=f.cov is not None)
        keep = c.steps >= c.warmup
        data = [dict(type="scatter", x=c.steps[keep].tolist(), y=c.losses[keep].tolist(), mode="markers",
                     name=f"{c.name} (observed)", marker=dict(color="#ef553b", size=5))]
        if fc.low is not None and fc.ok:
            data += [dict(type="scatter", x=x.tolist(), y=fc.shown(fc.high), mode="lines", line=dict(width=0),
                          showlegend=False, hoverinfo="skip"),
                     dict(type="scatter", x=x.tolist(), y=fc.shown(fc.low), mode="lines", line=dict(width=0),
                          fill="tonexty", fillcolor="rgba(99,110,250,0.15)", name=f"{LEVEL:.0%} band",
                          hoverinfo="skip")]
        line = dict(color="#636efa") if fc.ok else dict(color=OUT_OF_DOMAIN, dash="dot")
        data.append(dict(type="scatter", x=x.tolist(), y=fc.shown(), mode="lines", line=line,
                         name=f"{f.law} law" + ("" if fc.ok else " (outside the fit's domain)")))
        return {"data": data, "layout": _layout(420, title=f"your run: {c.name}", xaxis_title="step",
                                                yaxis_title="loss", uirevision="own-run")}


def _no_paths(text: str, ws: Workspace) -> str:
    """An error message with the server's folders replaced by their public names (runs/, assets/, data/)."""
    from workbench import assets

    for root, public in ((str(ws.root / "runs"), "runs"), (str(ws.root / "uploads"), "uploads"),
                         (str(assets.ASSETS_DIR), "assets"),
                         *((str(d), "data") for d in ws.data_dirs)):
        text = text.replace(root, public)
    return text


def _tol_options() -> dict:
    return {f"{v:.0e}": float(v) for v in (10.0 ** k for k in range(-9, 0))}
