"""``CurveFitter``: fit a loss-curve law to runs, hold some out, and see how well it extrapolates.

A thin view over :mod:`workbench.laws` and :mod:`workbench.curves`: the fit is
:func:`workbench.laws.fit`, the drawn curves and bands are :meth:`FittedLaw.predict_band` at the
display steps (:func:`workbench.plots.display_steps`), the metrics are :meth:`FittedLaw.score`.
No maths lives here. A user's own run joins the curves with :meth:`CurveFitter.add_path` (or the path box
and the "add" button): any format :func:`workbench.curves.read_runs` detects, fitted on or held out.

Example:
    >>> from workbench import assets
    >>> from workbench.curves import read_curve
    >>> from workbench.widgets import CurveFitter
    >>> curves = [read_curve(assets.run_dir(n)) for n in ("constant", "cosine", "wsd20")]
    >>> f = CurveFitter(curves, law="annealing", fit_on=["constant", "cosine"])
    >>> f.fitted.law, sorted(f.scores)
    ('annealing', ['constant', 'cosine', 'wsd20'])
    >>> f.checkboxes["wsd20"].value = True          # what ticking the box does
    >>> f.fit_button.click()                         # what pressing "fit" does
    >>> f.fitted.info["curves"]
    ['constant', 'cosine', 'wsd20']
    >>> f  # doctest: +SKIP
    ... # in a notebook: shows the controls, the plot and the tables
"""
from __future__ import annotations

import html
import time
import warnings
from typing import Sequence

import ipywidgets as W
import plotly.graph_objects as go

from workbench import laws, plots, schedules
from workbench.curves import LossCurve, describe_choices, read_curve, read_curves
from workbench.livefit import LEVEL, forecast

__all__ = ["CurveFitter"]

TRACES_PER_CURVE = 4     # observed, band low, band high (filled to low), law
_METRICS = ("r2", "pred_err", "worst_err", "n")


class CurveFitter(W.VBox):
    """Observed losses, the fitted law with its extrapolation and band, parameters and per-curve scores.

    Args:
        curves: :class:`workbench.curves.LossCurve` objects (different schedules of one setup).
        law: ``"annealing"`` or ``"multipower"`` (the law selector's start value).
        fit_on: names of the curves to fit (ticked boxes); the others are held out and only scored.
            Default: all of them.
        max_points: display steps per curve (the law is evaluated exactly at each).
        level: the prediction band's level (calibrated on held-out curves when the fit has a
            calibration, else the parameter uncertainty: see ``FittedLaw.predict``).
        fit_kwargs: passed to :func:`workbench.laws.fit` (e.g. ``lam=None``, ``max_points=200``).
        autofit: fit once at construction (when some curve is ticked).

    Traces: for curve ``i``, ``figure.data[4*i : 4*i+4]`` are the observed points (after warmup: the
    laws do not describe the warmup), the band's low and high edges (high filled down to low) and
    the law's curve, over the curve's whole schedule. ``scores[name]`` is ``fitted.score(curve)``.
    """

    def __init__(self, curves: Sequence[LossCurve], law: str = "annealing", *, fit_on: Sequence[str] | None = None,
                 max_points: int = 500, level: float = LEVEL, fit_kwargs: dict | None = None, autofit: bool = True):
        curves = list(curves)
        if not curves or not all(isinstance(c, LossCurve) for c in curves):
            raise ValueError("CurveFitter takes a non-empty list of LossCurve objects; read files with "
                             "CurveFitter.from_files([...])")
        if law not in laws.LAWS:
            raise ValueError(f"unknown law {law!r}; choose one of {', '.join(laws.LAWS)}")
        self.max_points = int(max_points)
        self.level = float(level)
        self.fit_kwargs = dict(fit_kwargs or {})
        self.fitted: laws.FittedLaw | None = None
        self.scores: dict[str, dict] = {}
        self.forecasts: dict = {}        # per curve: what may be shown of the law (livefit.forecast)
        self.live_fit = None
        self._designers: list = []
        self._last_draw = -float("inf")
        self._drawn_refits = -1
        self.min_interval = 0.5
        self._forward = True

        self.law = W.Dropdown(description="law", options=list(laws.LAWS), value=law, layout=W.Layout(width="220px"))
        self.fit_button = W.Button(description="fit", icon="play", button_style="primary",
                                   tooltip="fit the law to the ticked curves", layout=W.Layout(width="90px"))
        self.fit_button.on_click(lambda _: self._on_fit())
        self.message = W.HTML()
        self.boxes = W.HBox()
        self.checkboxes: dict[str, W.Checkbox] = {}
        self.params_html = W.HTML()
        self.warnings_html = W.HTML()        # the fit's warnings (FittedLaw.warnings), in plain words
        self.metrics_html = W.HTML()
        # a user's own run: a file or folder read with workbench.curves.read_curve (add_path)
        self.path_text = W.Text(placeholder="your run: HF output folder, TensorBoard logdir, W&B export, "
                                "metrics.csv, log.jsonl", layout=W.Layout(width="420px"))
        self.run_text = W.Text(placeholder="run (if the folder holds several)", layout=W.Layout(width="220px"))
        self.side = W.ToggleButtons(options=["fit", "held out"], value="fit", layout=W.Layout(width="auto"),
                                    style=dict(button_width="70px"), tooltip="fit on it, or only score it")
        self.add_button = W.Button(description="add", icon="plus", tooltip="read the run and add its curve",
                                   layout=W.Layout(width="80px"))
        self.add_button.on_click(lambda _: self._on_add())
        self.curves: list[LossCurve] = []
        self._set_curves(curves, fit_on)
        top = W.HBox([self.law, self.fit_button, self.message])
        add = W.HBox([self.path_text, self.run_text, self.side, self.add_button])
        tables = W.HBox([self.params_html, self.metrics_html], layout=W.Layout(gap="30px"))
        super().__init__([top, add, self.warnings_html, W.HTML("<b>fit on</b> (unticked: held out, only scored)"),
                          self.boxes, self.figure, tables])
        if autofit and any(cb.value for cb in self.checkboxes.values()):
            self._on_fit()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_files(cls, paths: Sequence, *, read_kwargs: dict | None = None, **kwargs) -> "CurveFitter":
        """Read each path with :func:`workbench.curves.read_curve` (CSV, run logs, W&B, TensorBoard)."""
        return cls(read_curves(list(paths), **dict(read_kwargs or {})), **kwargs)

    @classmethod
    def live(cls, live_fit, *, min_interval: float = 0.5, forward: bool = True, **kwargs) -> "CurveFitter":
        """A fitter that follows a :class:`workbench.livefit.LiveFit` (see :meth:`attach`)."""
        placeholder = LossCurve(live_fit.lrs, [live_fit.lrs.size - 1], [1.0], name="live",
                                meta={"placeholder": True}, warmup_steps=live_fit.schedule.warmup)
        kwargs.setdefault("law", live_fit.law)
        self = cls([placeholder], autofit=False, **kwargs)
        self.attach(live_fit, min_interval=min_interval, forward=forward)
        return self

    # ------------------------------------------------------------------ public API
    def fit(self) -> laws.FittedLaw:
        """Fit the selected law to the ticked curves and redraw (what the "fit" button does)."""
        if self.live_fit is not None:
            self.live_fit.refit(force=True)
            self.refresh(force=True)
            if self.fitted is None:
                raise ValueError(self.live_fit.last_error or "the LiveFit has too few points to fit yet")
            return self.fitted
        train = [c for c in self.curves if self.checkboxes[c.name].value]
        if not train:
            raise ValueError("tick at least one curve to fit on")
        fitted = laws.fit(train, law=self.law.value, **self.fit_kwargs)
        self.show_law(fitted)
        return fitted

    def add_path(self, path, run: str | None = None, *, fit: bool = True, **read_kwargs) -> LossCurve:
        """Read a user's run with :func:`workbench.curves.read_curve` (an HF output folder, a
        TensorBoard logdir, a W&B export, a Lightning ``metrics.csv``, a run log: the format is
        detected) and add its curve: ``fit=True`` ticks it (fitted on, and the law is refitted),
        ``False`` holds it out (only scored). ``run`` chooses one run of a folder holding several;
        ``read_kwargs`` (``loss_key=``, ``lr_key=``, ``step_key=``, ``step_offset=``, ``schedule=``)
        go to ``read_curve``. What the "add" button does with the text boxes.

        >>> from workbench import assets
        >>> from workbench.curves import read_curve
        >>> f = CurveFitter([read_curve(assets.run_dir("constant"))], autofit=False)
        >>> f.add_path(assets.run_dir("cosine"), fit=False).name, list(f.checkboxes)
        ('cosine', ['constant', 'cosine'])
        """
        if self.live_fit is not None:
            raise ValueError("this fitter follows a LiveFit; add runs to a CurveFitter made from curves")
        return self.add_curve(read_curve(path, run=run, **read_kwargs), fit=fit)

    def add_curve(self, curve: LossCurve, *, fit: bool = True) -> LossCurve:
        """Add a curve (a unique name is made if taken): ticked and refitted when ``fit``, else held out
        and scored with the current law. Returns the curve as added."""
        if not isinstance(curve, LossCurve):
            raise ValueError(f"add_curve takes a LossCurve, got {type(curve).__name__}; read files with add_path")
        c = self._unique(curve, {x.name for x in self.curves})
        self.curves.append(c)
        cb = W.Checkbox(value=bool(fit), description=c.name, indent=False, layout=W.Layout(width="auto"))
        self.checkboxes[c.name] = cb
        self.boxes.children = tuple(self.checkboxes.values())
        self._add_traces(self.figure, len(self.curves) - 1, c, "fit" if fit else "held out")
        if fit:
            self._on_fit()
        elif self.fitted is not None:
            self.show_law(self.fitted)
        else:
            self._redraw()
        return c

    def show_law(self, fitted: laws.FittedLaw) -> None:
        """Draw a fitted law (from :meth:`fit`, a file, or elsewhere) against the curves and score it."""
        self.fitted = fitted
        self.scores = {c.name: fitted.score(c) for c in self.curves
                       if not c.meta.get("placeholder") and (c.steps >= c.warmup).any()}
        self._redraw()
        for d in self._designers:
            d.attach_law(fitted)

    def designer(self, schedules_: Sequence | None = None):
        """A :class:`workbench.widgets.ScheduleDesigner` with the fitted law attached (its predicted-loss
        panel greys a schedule outside the fit's domain and says why).

        Default schedules: cosine and WSD (20% decay) with the curves' peak LR, length and warmup
        (the LiveFit's schedule when live). Later fits update its predictor.
        """
        from workbench.widgets.designer import ScheduleDesigner

        if self.fitted is None:
            raise ValueError("fit a law first (press fit or call .fit())")
        if schedules_ is None:
            if self.live_fit is not None:
                schedules_ = [self.live_fit.schedule]
            else:
                c = max(self.curves, key=lambda c: c.total_steps)
                peak, total, warm = c.peak_lr, c.total_steps, c.warmup
                schedules_ = [schedules.cosine(peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=peak / 10),
                              schedules.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=peak / 10,
                                            decay_fraction=0.2)]
        d = ScheduleDesigner(list(schedules_), law=self.fitted, max_points=self.max_points)
        self._designers.append(d)
        return d

    def attach(self, live_fit, *, min_interval: float = 0.5, forward: bool = True) -> "CurveFitter":
        """Follow a LiveFit: draw its observed points and its latest fit, at most every ``min_interval``
        seconds and only after it refitted. Subscribe the fitter to the trainer
        (``trainer.subscribe(fitter)``): with ``forward=True`` it passes each event on to the LiveFit
        (do not subscribe the LiveFit as well); with ``forward=False`` it only redraws (subscribe
        both). Call :meth:`refresh` to redraw now."""
        self.live_fit = live_fit
        self.min_interval = float(min_interval)
        self._forward = bool(forward)
        self._drawn_refits = -1
        self.law.value = live_fit.law
        self.law.disabled = True
        for cb in self.checkboxes.values():
            cb.value, cb.disabled = True, True
        self.refresh(force=True)
        return self

    def update(self, event: dict | None = None) -> None:
        """Trainer subscriber in live mode: forward the event to the LiveFit, redraw if it refitted."""
        if self.live_fit is None:
            raise ValueError("update() follows a LiveFit: call attach(live_fit) or use CurveFitter.live(...)")
        if event is not None and self._forward:
            self.live_fit.update(event)
        if time.monotonic() - self._last_draw >= self.min_interval:
            self.refresh()

    __call__ = update

    def refresh(self, force: bool = False) -> None:
        """Redraw from the attached LiveFit (if it refitted since the last draw, or ``force``)."""
        live = self.live_fit
        if live is None:
            return
        if not force and live.refits == self._drawn_refits:
            return
        c = live.curve()
        if c is not None:
            c.name = "live"
            self.curves = [c]
        self._drawn_refits = live.refits
        if live.fitted is not None:
            self.show_law(live.fitted)
            self.message.value = f"live fit at step {live.fitted.info.get('live_step', '?')}"
        else:
            self.fitted, self.scores = None, {}
            self._redraw()
            self.message.value = f"no forecast yet: {html.escape(live.waiting_reason())}"

    def steps(self, i: int):
        """The display steps at which curve ``i``'s law curve and band are drawn."""
        c = self.curves[i]
        idx = plots.display_steps(c.total_steps, self.max_points)
        return idx[idx >= c.warmup]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _unique(c: LossCurve, taken: set, i: int | None = None) -> LossCurve:
        """``c``, renamed ``NAME (2)``, ``NAME (3)``, ... if its name is taken (names key boxes and scores)."""
        base = c.name or f"curve {(i if i is not None else len(taken)) + 1}"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base} ({k})"
        return c if name == c.name else LossCurve(c.lrs, c.steps, c.losses, name, c.meta, c.warmup_steps)

    def _set_curves(self, curves: list[LossCurve], fit_on) -> None:
        for i, c in enumerate(curves):
            self.curves.append(self._unique(c, {x.name for x in self.curves}, i))
        names = [c.name for c in self.curves]
        if fit_on is not None:
            unknown = [n for n in fit_on if n not in names]
            if unknown:
                raise ValueError(f"fit_on names {unknown} are not among the curves {names}")
        for c in self.curves:
            cb = W.Checkbox(value=fit_on is None or c.name in fit_on, description=c.name, indent=False,
                            layout=W.Layout(width="auto"))
            self.checkboxes[c.name] = cb
        self.boxes.children = tuple(self.checkboxes.values())
        # every trace is named and its legend entry decided here, in the figure the widget starts
        # from: later redraws send only x/y (and a single trace's name/dash when a role changes), so
        # the browser never sees an unnamed trace ("trace 0", "trace 1", ... in the legend)
        fig = go.Figure()
        fig.update_layout(height=420, template="plotly_white", margin=dict(l=60, r=20, t=40, b=40),
                          xaxis_title="step", yaxis_title="loss", legend=dict(orientation="h", y=-0.15),
                          title="observed (points), law (lines) and its band")
        for i, c in enumerate(self.curves):
            self._add_traces(fig, i, c, "fit" if self.checkboxes[c.name].value else "held out")
        self.figure = go.FigureWidget(fig)

    def _add_traces(self, fig, i: int, c: LossCurve, role: str) -> None:
        """Curve ``i``'s four named traces (observed, band low, band high, law), empty until drawn."""
        color = plots.COLORS[i % len(plots.COLORS)]
        fig.add_scatter(x=[], y=[], mode="markers", name=f"{c.name} (observed)", showlegend=True,
                        legendgroup=c.name, marker=dict(color=color, size=5))
        fig.add_scatter(x=[], y=[], mode="lines", line=dict(width=0, color=color),
                        legendgroup=c.name, showlegend=False, hoverinfo="skip", name=f"{c.name} band low")
        fig.add_scatter(x=[], y=[], mode="lines", line=dict(width=0, color=color), fill="tonexty", opacity=0.3,
                        legendgroup=c.name, showlegend=True, hoverinfo="skip",
                        name=f"{c.name} {self.level:.0%} band")
        fig.add_scatter(x=[], y=[], mode="lines", name=f"{c.name} (law, {role})", legendgroup=c.name,
                        showlegend=True, line=dict(color=color, dash="solid" if role == "fit" else "dash"))

    def _on_add(self) -> None:
        """The "add" button: read the typed path; a one-line message, never a traceback."""
        path, run = self.path_text.value.strip(), self.run_text.value.strip() or None
        if not path:
            self.message.value = "<span style='color:#c00'>type the path of a run's log file or folder first</span>"
            return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                c = self.add_path(path, run=run, fit=self.side.value == "fit")
        except (ValueError, OSError) as exc:
            self.message.value = f"<span style='color:#c00'>{html.escape(str(exc).splitlines()[0])}</span>"
            return
        notes = "".join(f"<br><span style='color:#9a6700'>{html.escape(str(w.message))}</span>" for w in caught
                        if issubclass(w.category, UserWarning))
        choices = c.meta.get("choices")
        read = f" ({html.escape(describe_choices(choices))})" if choices else ""
        fitted = self.message.value if self.side.value == "fit" else ""
        self.message.value = f"added {html.escape(c.name)}{read}" + (f"<br>{fitted}" if fitted else "") + notes

    def _on_fit(self) -> None:
        self.message.value = "<i>fitting...</i>"
        try:
            self.fit()
        except ValueError as exc:
            self.message.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return
        f = self.fitted
        self.message.value = f"{f.law}: {f.info.get('n_points', '?')} points in {f.info.get('time_s', 0):.2f} s"

    def _warnings_html(self) -> str:
        """The fit's warnings and, per curve, why its prediction is out of the fit's domain or hidden."""
        f = self.fitted
        if f is None:
            return ""
        lines = [f"fit warning: {html.escape(w)}" for w in f.warnings]
        lines += [f"{html.escape(n)}: {html.escape('; '.join(fc.problems))}" for n, fc in self.forecasts.items()
                  if not fc.ok]
        return "<br>".join(f"<span style='color:#9a6700'>{x}</span>" for x in lines)

    def _redraw(self) -> None:
        self._last_draw = time.monotonic()
        f = self.fitted
        self.forecasts = {}
        with self.figure.batch_update():              # x/y of every trace: nothing sparse in this batch
            for i, c in enumerate(self.curves):
                obs, low, high, law = self.figure.data[TRACES_PER_CURVE * i: TRACES_PER_CURVE * i + TRACES_PER_CURVE]
                if c.meta.get("placeholder"):              # live, before the first points
                    for t in (obs, low, high, law):
                        t.x, t.y = [], []
                    continue
                keep = c.steps >= c.warmup
                obs.x, obs.y = c.steps[keep], c.losses[keep]
                if f is None:
                    for t in (low, high, law):
                        t.x, t.y = [], []
                    continue
                x = self.steps(i)
                fc = forecast(f, c, x, band=f.cov is not None, level=self.level)
                self.forecasts[c.name] = fc
                if fc.low is not None:
                    low.x, low.y, high.x, high.y = x, fc.low, x, fc.high
                else:
                    low.x, low.y, high.x, high.y = [], [], [], []
                law.x, law.y = x, fc.mean
        for i, c in enumerate(self.curves):                 # a role change restyles that one trace
            law = self.figure.data[TRACES_PER_CURVE * i + 3]
            cb = self.checkboxes.get(c.name)
            role = "fit" if cb is None or cb.value else "held out"
            fc = self.forecasts.get(c.name)
            if fc is not None and not fc.ok:
                role += ", outside the fit's domain"
            name, dash = f"{c.name} (law, {role})", "solid" if role == "fit" else "dot" if "domain" in role else "dash"
            if law.name != name:
                law.name = name
            if law.line.dash != dash:
                law.line.dash = dash
        self.params_html.value = self._params_table()
        self.warnings_html.value = self._warnings_html()
        self.metrics_html.value = self._metrics_table()

    def _params_table(self) -> str:
        f = self.fitted
        if f is None:
            return "<i>no fit yet</i>"
        rows = "".join(f"<tr><td><code>{k}</code></td><td style='text-align:right'>{v:.4g}</td></tr>"
                       for k, v in f.params.items())
        return f"<table><tr><th colspan=2>{f.law} law</th></tr>{rows}</table>"

    def _metrics_table(self) -> str:
        if not self.scores:
            return ""
        head = "<tr><th>curve</th><th>role</th><th>r2</th><th>pred_err</th><th>worst_err</th><th>n</th></tr>"
        rows = []
        for c in self.curves:
            s = self.scores.get(c.name)
            if s is None:
                continue
            cb = self.checkboxes.get(c.name)
            role = "fit" if cb is None or cb.value else "held out"
            rows.append(f"<tr><td>{html.escape(c.name)}</td><td>{role}</td>" + "".join(
                f"<td style='text-align:right'>{self.format_metric(k, s[k])}</td>" for k in _METRICS) + "</tr>")
        return f"<table>{head}{''.join(rows)}</table>"

    @staticmethod
    def format_metric(key: str, value) -> str:
        """How a score is shown in the metrics table (``pred_err``/``worst_err`` as percentages)."""
        if key == "n":
            return str(int(value))
        if key in ("pred_err", "worst_err"):
            return f"{100 * value:.2f}%"
        return f"{value:.4f}"
