"""The classroom dashboard: ``workbench serve`` - the four tools in one panel app, no notebook needed.

Tabs: **Schedule** (design a schedule, see its predicted loss from the law fitted to real 124M runs
or to the bundled tiny runs, greyed with the reasons outside the fit's domain, save it; below it, fit
the law to your own run: a log file or folder, or an upload), **Training** (start a short run of the tiny model from the page and watch its loss
with the live loss-law forecast), **Data selection** (angle concentration of a generated task,
the GAIN sampler's subset highlighted live, export of the chosen indices) and **Sparsity** (diff
two checkpoints, heatmap of update sparsity at any tolerance, drill-down on a matrix).

Every browser session gets its own :class:`Dashboard` (its own controls and plots); what matters is
saved in the shared :class:`~workbench.workspace.Workspace` (``--run-dir``), so a restart loses
nothing and sessions never overwrite each other's runs. The tabs are views over the core
(:mod:`workbench.schedules`, :mod:`workbench.plots`, :mod:`workbench.livefit`, ...): no maths here.

Safe for a classroom (``workbench serve --address 0.0.0.0``): a token is needed (printed with the
URL, like JupyterLab), websocket origins are checked (:mod:`workbench.widgets.dashboard_server`),
every number a page sends is bounded here on the server (:data:`LIMITS`), at most ``--max-runs``
runs train at once (the others queue, and show their place), a run can be stopped or resumed only
by the browser that started it or the teacher (``--admin``), the Sparsity tab and "Fit your own run"
read only workspace runs (and uploads, size-capped, under checked names), bundled assets and
``--data-dir`` folders, and every user string shown is escaped by
:func:`esc`.

Start it with ``workbench serve [--port P] [--run-dir DIR]`` (localhost) or
``panel serve widgets/dashboard.py --args --run-dir DIR`` (no token, no ownership: one user).

Example:
    >>> import tempfile
    >>> from workbench.widgets.dashboard import Dashboard
    >>> dash = Dashboard(tempfile.mkdtemp())
    >>> dash.schedule.controls["total_steps"].value = 2000
    >>> dash.schedule.current().total_steps
    2000
    >>> dash.layout  # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import os
import sys
import warnings
from typing import Any

import numpy as np
import panel as pn
import plotly.graph_objects as go

from workbench import plots, schedules
from workbench.workspace import SOURCES, LogTail, Workspace, default_law

__all__ = ["Dashboard", "ScheduleTab", "TrainingTab", "app", "serve", "lr_options", "esc", "bounded", "LIMITS"]

MAX_POINTS = 1000        # points per drawn curve: plenty for a plot, and half the work of 2000 per redraw
OUT_OF_DOMAIN = "#9aa5b1"  # grey: a prediction outside the fitted law's domain
OWN = "own"              # the "predicted by" choice for a law fitted to the user's own run
FAMILIES = ("cosine", "wsd", "linear", "constant", "inverse_sqrt", "infinite")

#: server-side bounds of every number a page can send (the widgets show the same bounds, but a
#: client can send anything over the websocket: these are checked again before any work)
LIMITS = {
    "total_steps": (1, 1_000_000),      # the designer evaluates every step for S1/S2: ~0.6 s, ~90 MB at 1M
    "warmup_steps": (0, 1_000_000),
    "decay_fraction": (0.02, 0.9),
    "train_steps": (1, 20_000),         # tiny model on CPU: ~minutes
    "batch_size": (1, 64),
    "seq_len": (8, 512),
    "eval_interval": (1, 20_000),
    "n_examples": (8, 20_000),
    "subset_size": (1, 20_000),
    "rank": (0, 20_000),
    "seed": (0, 2**31 - 1),
}


def lr_options(low_exp: int = -6, high_exp: int = -1, zero: bool = False) -> dict:
    """Labelled LR values for a discrete slider: 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 per decade, from
    ``10**low_exp`` to ``10**high_exp``, labelled like ``3e-03`` (panel shows small floats as 0).

    Example:
        >>> list(lr_options(-3, -2))[:4], lr_options(-3, -2)["3e-03"]
        (['1e-03', '1.5e-03', '2e-03', '2.5e-03'], 0.003)
    """
    mantissas = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)
    opts = {}
    for e in range(low_exp, high_exp + 1):
        for m in mantissas if e < high_exp else (1,):
            v = float(f"{m}e{e}")
            opts[f"{m:g}e{e:+03d}"] = v
    return {"0": 0.0, **opts} if zero else opts


def _nearest(options: dict, value: float):
    vals = np.array(list(options.values()))
    return float(vals[np.argmin(np.abs(np.log10(np.maximum(vals, 1e-300)) - np.log10(max(value, 1e-300))))]) \
        if value > 0 else (0.0 if 0.0 in vals else float(vals[0]))


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def esc(value) -> str:
    """The one escaping helper: anything a user typed or a file holds (names, paths, error messages)
    made inert inside the dashboard's HTML.

    Example:
        >>> esc('<img src=x onerror="alert(1)">')
        '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    """
    return html.escape(str(value), quote=True)


def _message(text: str, kind: str = "info") -> str:
    """A status line from plain text (escaped here)."""
    return _html_message(esc(text), kind)


def _html_message(markup: str, kind: str = "info") -> str:
    """A status line from markup whose user parts were passed through :func:`esc`."""
    color = {"info": "#555", "ok": "#1a7f37", "warn": "#9a6700", "error": "#b42318"}[kind]
    return f'<span style="color:{color}">{markup}</span>'


def bounded(widget, key: str, high=None):
    """The widget's value if it lies in ``LIMITS[key]`` (``high`` lowers the top), else a ValueError
    naming the field and its range. Checked on the server: the widget's own bounds are only advice."""
    low, top = LIMITS[key]
    top = top if high is None else min(top, high)
    v = widget.value
    label = getattr(widget, "label", key) or key
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= top
    if ok and isinstance(low, int) and isinstance(top, int):
        ok = float(v).is_integer()
    if not ok:
        raise ValueError(f"{label} must be between {low:,} and {top:,}; got {v!r}")
    return type(low)(v) if isinstance(low, int) else float(v)


# ====================================================================== schedule designer
class ScheduleTab:
    """Design a schedule with panel controls; the figure (LR, S1, S2, predicted loss) is
    :func:`workbench.plots.schedule_figure` with the workspace's fitted law as predictor."""

    def __init__(self, ws: Workspace, predict: bool = True, law: str = "annealing", source: str = "124m"):
        self.ws = ws
        self.predict = predict
        # the annealing law by default: O(steps) per prediction (multipower is O(steps x points))
        self.law = pn.widgets.Select(label="loss law (predicted loss)", options=["annealing", "multipower"],
                                     value=law, visible=predict)
        # the predictor: by default the law fitted to real 124M runs, or the one fitted to the tiny runs
        self.source = pn.widgets.Select(label="predicted by", options={v: k for k, v in SOURCES.items()},
                                        value=source, visible=predict)
        self.predictor = None
        self.own_law, self.own_name = None, ""      # a law fitted to the user's own run (use_law)
        self.forecasts: list = []
        self.lr_opts, self.min_opts = lr_options(), lr_options(-7, -1, zero=True)
        c = self.controls = {
            "family": pn.widgets.Select(label="family", options=list(FAMILIES), value="cosine"),
            "peak_lr": pn.widgets.DiscreteSlider(label="peak LR", options=self.lr_opts,
                                                 value=_nearest(self.lr_opts, 3e-3)),
            "min_lr": pn.widgets.DiscreteSlider(label="min LR", options=self.min_opts,
                                                value=_nearest(self.min_opts, 3e-4)),
            "total_steps": pn.widgets.IntInput(label="total steps", value=10_000, start=LIMITS["total_steps"][0],
                                               end=LIMITS["total_steps"][1], step=100),
            "warmup_steps": pn.widgets.IntInput(label="warmup steps", value=500, start=0,
                                                end=LIMITS["warmup_steps"][1], step=50),
            "decay_fraction": pn.widgets.FloatSlider(label="decay fraction (WSD)", start=0.02, end=0.9,
                                                     step=0.01, value=0.2),
            "decay": pn.widgets.Select(label="decay shape (WSD)", options=list(schedules.DECAY_SHAPES),
                                       value="linear"),
        }
        self.compare = pn.widgets.MultiChoice(label="compare with saved", options=ws.schedule_names())
        self.name = pn.widgets.TextInput(label="save as", placeholder="e.g. wsd-20pct")
        self.save_button = pn.widgets.Button(label="Save schedule", color="primary")
        self.status = pn.pane.HTML("", sizing_mode="stretch_width")
        self.plot = pn.pane.Plotly({"data": [], "layout": {}}, sizing_mode="stretch_width", height=580,
                                   config={"displaylogo": False})
        for w in c.values():
            w.param.watch(self._changed, "value")
        self.compare.param.watch(self._changed, "value")
        self.law.param.watch(self._changed, "value")
        self.source.param.watch(self._changed, "value")
        self.save_button.on_click(lambda _e: self.save())
        self.redraws = 0
        self.redraw()
        self.layout = pn.Row(
            pn.Column(*c.values(), self.source, self.law, pn.layout.Divider(), self.compare, self.name, self.save_button,
                      self.status, width=320),
            self.plot, sizing_mode="stretch_width")

    def _kwargs(self) -> dict:
        c = self.controls
        fam = c["family"].value
        if fam not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}")
        for k, opts in (("peak_lr", self.lr_opts), ("min_lr", self.min_opts)):
            if c[k].value not in opts.values():
                raise ValueError(f"{c[k].label} must be one of the slider's values")
        kw = {"peak_lr": c["peak_lr"].value, "total_steps": bounded(c["total_steps"], "total_steps"),
              "warmup_steps": bounded(c["warmup_steps"], "warmup_steps")}
        if fam in ("cosine", "linear", "wsd", "infinite"):
            kw["min_lr"] = c["min_lr"].value
        if fam == "wsd":
            if c["decay"].value not in schedules.DECAY_SHAPES:
                raise ValueError(f"decay shape must be one of {', '.join(schedules.DECAY_SHAPES)}")
            kw.update(decay_fraction=bounded(c["decay_fraction"], "decay_fraction"), decay=c["decay"].value)
        return kw

    def current(self):
        """The schedule the controls describe (``ValueError`` for an impossible combination)."""
        return schedules.make(self.controls["family"].value, **self._kwargs())

    def _changed(self, event=None):
        if not self._keep_min_below_peak(event):   # a clamp moves the other slider, whose change redraws
            self.redraw()

    def _keep_min_below_peak(self, event=None) -> bool:
        """Keep min LR <= peak LR: min LR follows peak LR down, and min LR dragged above peak LR pushes peak
        LR up (the slider the user holds keeps its value: one set back from the server would show its handle
        where the user left it, not at its value)."""
        c = self.controls
        peak, low = c["peak_lr"].value, c["min_lr"].value
        if low <= peak:
            return False
        if event is not None and event.obj is c["min_lr"]:
            c["peak_lr"].value = min(v for v in self.lr_opts.values() if v >= low)
        else:
            c["min_lr"].value = max(v for v in self.min_opts.values() if v <= peak)
        return True

    def redraw(self) -> None:
        fam = self.controls["family"].value
        self.controls["decay_fraction"].visible = self.controls["decay"].visible = fam == "wsd"
        self.controls["min_lr"].visible = fam in ("cosine", "linear", "wsd", "infinite")
        try:
            scheds, names = [self.current()], ["designed"]
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return
        for n in self.compare.value:
            try:
                scheds.append(self.ws.load_schedule(n))
                names.append(n)
            except (ValueError, FileNotFoundError) as exc:
                self.status.object = _message(f"{n}: {exc}", "error")
        if self.predict and (self.law.value not in ("annealing", "multipower")
                             or self.source.value not in (*SOURCES, *((OWN,) if self.own_law is not None else ()))):
            self.status.object = _message("choose a loss law and a source from the lists", "error")
            return
        fig = plots.schedule_figure_dict(scheds, names=names, max_points=MAX_POINTS)
        fig["layout"]["uirevision"] = "designer"
        text = self._draw_forecasts(fig, scheds, names) if self.predict else ""
        self.plot.object = fig
        self.redraws += 1
        self.status.object = text

    def fitted_law(self):
        """The law that predicts the loss (the "predicted by" and "loss law" choices)."""
        if self.source.value == OWN and self.own_law is not None:
            return self.own_law
        if self.source.value == "tiny":
            return self.ws.law(self.law.value)
        return default_law(self.law.value, source=self.source.value)

    def _draw_forecasts(self, fig: dict, scheds: list, names: list) -> str:
        """Fill each schedule's predicted-loss trace from :func:`workbench.livefit.forecast` (greyed and
        dotted outside the fit's domain, nothing below its floor); return the status text."""
        from workbench.livefit import forecast

        fitted = self.fitted_law()
        self.predictor = fitted.predictor(max_points=MAX_POINTS)
        self.forecasts = []
        lines = []
        for i, (s, n) in enumerate(zip(scheds, names)):
            trace = fig["data"][4 * i + 3]
            fc = forecast(fitted, s, fig["data"][4 * i]["x"])
            self.forecasts.append(fc)
            trace["x"], trace["y"] = fc.steps, fc.shown()
            if not fc.ok:
                trace["line"] = dict(color=OUT_OF_DOMAIN, dash="dot")
                trace["name"] = f"{n} (outside the fit's domain)"
            who = "" if i == 0 else f"{n}: "
            if fc.ok and fc.final is not None:
                lines.append(_message(f"{who}predicted final loss {fc.final:.4f}"))
            else:
                lines.append(_message(f"{who}no trustworthy prediction: " + "; ".join(fc.problems), "warn"))
        about = (f"{fitted.law} law fitted to your run {self.own_name}" if self.source.value == OWN
                 else f"{self.law.value} {SOURCES[self.source.value]}")
        lines.append(_message(f"({about})"))
        lines += [_message("fit warning: " + w, "warn") for w in fitted.warnings]
        return "<br>".join(lines)

    def use_law(self, fitted, name: str) -> None:
        """Predict with ``fitted`` (a law fitted to the user's own run, ``name``): it becomes the
        "predicted by" choice "law fitted to your run" and the plot is redrawn."""
        self.own_law, self.own_name = fitted, str(name)
        opts = {v: k for k, v in SOURCES.items()}
        opts[f"law fitted to your run ({self.own_name})"] = OWN
        self.source.options = opts
        if self.source.value != OWN:
            self.source.value = OWN          # its watcher redraws
        else:
            self.redraw()

    def save(self, name: str | None = None) -> str | None:
        """Save the designed schedule as ``schedules/NAME.json`` in the workspace."""
        name = (name or self.name.value or "").strip() or f"schedule-{_stamp()}"
        try:
            self.ws.save_schedule(name, self.current())
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return None
        self.compare.options = self.ws.schedule_names()
        self.status.object = _message(f"saved {name} in schedules/", "ok")
        return name


# ====================================================================== live training
class TrainingTab:
    """Start a run of the tiny model from the page and watch it: loss, val loss and the live
    loss-law forecast (:class:`workbench.livefit.LiveFit` following the run log).

    ``user`` owns the runs this tab starts; only the owner (or an ``admin``) may stop or resume a
    run, everyone else sees it read-only. The log of the shown run is read incrementally."""

    DESIGNED = "(designed schedule)"

    def __init__(self, ws: Workspace, designer: ScheduleTab | None = None, user: str | None = None,
                 admin: bool = False):
        self.ws, self.designer, self.user, self.admin = ws, designer, user, admin
        self.run_name = pn.widgets.TextInput(label="run name", placeholder="default: run-<time>")
        self.data = pn.widgets.Select(label="data", options=["stdlib", "docs"], value="stdlib")
        self.sched = pn.widgets.Select(label="schedule", options=self._schedule_options())
        lim = LIMITS
        self.steps = pn.widgets.IntInput(label="steps", value=200, start=1, end=lim["train_steps"][1], step=50)
        self.batch = pn.widgets.IntInput(label="batch size", value=8, start=1, end=lim["batch_size"][1])
        self.seq_len = pn.widgets.IntInput(label="sequence length", value=64, start=lim["seq_len"][0],
                                           end=lim["seq_len"][1], step=8)
        self.eval_interval = pn.widgets.IntInput(label="evaluate every", value=10, start=1,
                                                 end=lim["eval_interval"][1])
        self.start_button = pn.widgets.Button(label="Start training", color="primary")
        self.stop_button = pn.widgets.Button(label="Stop", color="warning")
        self.resume_button = pn.widgets.Button(label="Resume", color="default")
        self.runs = pn.widgets.Select(label="show run", options=ws.names("runs"))
        self.status = pn.pane.HTML("", sizing_mode="stretch_width")
        self.plot = pn.pane.Plotly(self._empty(), sizing_mode="stretch_width", height=460,
                                   config={"displaylogo": False})
        self.start_button.on_click(lambda _e: self.start())
        self.stop_button.on_click(lambda _e: self.stop())
        self.resume_button.on_click(lambda _e: self.resume())
        self.runs.param.watch(lambda _e: self._follow(), "value")
        self._fit = None
        self._followed: str | None = None
        self._tail: LogTail | None = None
        self._by_step: dict[int, dict] = {}
        self._shown: tuple | None = None
        self.points = 0
        self._follow()
        self.layout = pn.Row(
            pn.Column(self.run_name, self.data, self.sched, self.steps, self.batch, self.seq_len,
                      self.eval_interval, pn.Row(self.start_button, self.stop_button, self.resume_button),
                      pn.layout.Divider(), self.runs, self.status, width=320),
            self.plot, sizing_mode="stretch_width")

    def _schedule_options(self) -> list[str]:
        return [self.DESIGNED, "cosine (default)"] + self.ws.schedule_names()

    @staticmethod
    def _empty():
        fig = go.Figure()
        fig.update_layout(template="plotly_white", height=440, xaxis_title="step", yaxis_title="loss",
                          uirevision="training", margin=dict(l=60, r=20, t=30, b=40),
                          legend=dict(orientation="h", y=-0.2))
        return fig

    def _schedule(self, steps: int):
        choice = self.sched.value
        if choice == self.DESIGNED and self.designer is not None:
            return self.designer.current()
        if choice in (self.DESIGNED, "cosine (default)"):
            return schedules.cosine(peak_lr=3e-3, total_steps=steps, warmup_steps=max(1, steps // 20),
                                    min_lr=3e-4)
        return self.ws.load_schedule(choice)

    def config(self):
        """The TrainConfig the form describes (every number checked against :data:`LIMITS`)."""
        from workbench.train import TrainConfig

        steps = bounded(self.steps, "train_steps")
        batch, seq_len = bounded(self.batch, "batch_size"), bounded(self.seq_len, "seq_len")
        eval_interval = bounded(self.eval_interval, "eval_interval")
        if self.data.value not in ("stdlib", "docs"):
            raise ValueError("data must be stdlib or docs")
        sched = self._schedule(steps)
        if steps > sched.total_steps:
            raise ValueError(f"steps={steps} is past the schedule's {sched.total_steps} steps; lower "
                             f"steps or design a longer schedule")
        return TrainConfig(model="tiny", data=self.data.value, schedule=sched, steps=steps,
                           batch_size=batch, seq_len=seq_len,
                           eval_interval=eval_interval, eval_batches=4,
                           checkpoint_interval=max(50, steps // 4), max_tokens=2_000_000, progress=False)

    def start(self) -> str | None:
        """Start the run described by the form (queued when ``--max-runs`` runs are training); returns its name."""
        self.sched.options = self._schedule_options()
        try:
            name = self.ws.unique_name("runs", (self.run_name.value or "").strip() or f"run-{_stamp()}")
            self.ws.start_run(name, self.config(), owner=self.user)
        except (ValueError, FileNotFoundError) as exc:
            self.status.object = _message(str(exc), "error")
            return None
        self.runs.options = self.ws.names("runs")
        self.runs.value = name
        self._follow()
        self.status.object = _message(f"started {name}", "ok")
        self._shown = None
        return name

    def _allowed(self, name: str | None) -> bool:
        return bool(name) and self.ws.can_control(name, self.user, self.admin)

    def stop(self) -> None:
        name = self.runs.value
        if not name:
            return
        if not self._allowed(name):
            self.status.object = _message(f"{name} belongs to another user: you can watch it, not stop it", "error")
            return
        self.ws.stop_run(name, wait=None)
        self.status.object = _message(f"stopping {name} after its current step")

    def resume(self) -> None:
        name = self.runs.value
        if not name:
            return
        if not self._allowed(name):
            self.status.object = _message(f"{name} belongs to another user: you can watch it, not resume it",
                                          "error")
            return
        try:
            self.ws.resume_run(name)
        except (ValueError, FileNotFoundError) as exc:
            self.status.object = _message(str(exc), "error")
            return
        self._follow(force=True)
        self.status.object = _message(f"resumed {name}", "ok")

    def _follow(self, force: bool = False) -> None:
        from workbench.livefit import LiveFit

        name = self.runs.value
        if name == self._followed and not force:
            return
        self._followed, self._fit, self.points, self._saved_refits = name, None, 0, 0
        self._tail, self._by_step, self._shown = None, {}, None
        allowed = self._allowed(name) if name else True
        self.stop_button.disabled = self.resume_button.disabled = not allowed
        if name:
            self._tail = LogTail(self.ws.run_dir(name) / "log.jsonl")
            try:
                self._fit = LiveFit.from_run_log(self.ws.run_dir(name), law="multipower", min_points=8,
                                                 refit_every=5, min_interval_s=0.5)
            except (ValueError, FileNotFoundError) as exc:
                self.status.object = _message(str(exc), "error")
        self.refresh()

    def refresh(self) -> None:
        """Read the new log lines of the shown run (only those) and redraw (the server calls this
        periodically); an idle session showing a finished run does no work beyond a file size check."""
        current = self.ws.names("runs")
        if current != list(self.runs.options):
            self.runs.options = current
        if not self._followed:
            return
        new = 0
        if self._fit is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = self._fit.poll()
        got = self._tail.read() if self._tail is not None else []
        for rec in got:
            if "step" in rec:
                self._by_step[int(rec["step"])] = rec     # a resumed run's repeat wins (latest_per_step)
        status = self.ws.run_status(self._followed)
        self.points += new
        if new or got:
            self.plot.object = self._figure()
            self._save_fit()
        key = (status["state"], status["step"], status["position"], status.get("error"),
               self._fit.refits if self._fit is not None else None)
        if key != self._shown:                    # the forecast report is recomputed only on a change
            self._shown = key
            self.status.object = self._status_text(status)

    def _save_fit(self) -> None:
        """Keep the run's latest forecast fit as ``fits/RUN.json`` (a restart loses nothing)."""
        fit = self._fit
        if fit is None or fit.fitted is None or fit.refits == self._saved_refits:
            return
        try:
            fit.fitted.save(self.ws.path("fits", self._followed))
            self._saved_refits = fit.refits
        except (OSError, ValueError) as exc:
            self.status.object += _message(f"could not save the fit: {exc}", "error")

    def _status_text(self, status: dict) -> str:
        from workbench.train import status_text

        state = status_text(status["summary"]) if status.get("summary") else status["state"]  # "stopped at 40 of .."
        text = f"<b>{esc(self._followed)}</b>: {esc(state)}"
        if status.get("position"):
            text += (f", position {status['position']} in the queue ({self.ws.running_count()} of at most "
                     f"{self.ws.max_runs} runs training)")
        else:
            text += f", step {esc(status['step'])}"
        if not self._allowed(self._followed):
            text += " &middot; another user's run: read-only"
        rep = self._fit.report() if self._fit is not None and self._fit._last_step >= 0 else {}
        if rep.get("forecast"):
            text += (f"<br>forecast final loss {rep['final_loss']:.3f} "
                     f"[{rep['final_low']:.3f}, {rep['final_high']:.3f}] ({rep['level']:.0%} band, "
                     f"{esc(rep['loss_key'])})")
        elif rep.get("reason"):
            text += f"<br>no forecast: {esc(rep['reason'])}"
        for w in rep.get("warnings", []):
            text += f"<br>fit warning: {esc(w)}"
        if status.get("error"):
            text += f"<br>{esc(status['error'])}"
        return _html_message(text, "error" if status["state"] == "failed" else "info")

    def _figure(self):
        from workbench.livefit import LEVEL

        fig = self._empty()
        if not self._by_step:
            return fig
        recs = [self._by_step[k] for k in sorted(self._by_step)]
        steps = [r["step"] for r in recs]
        fig.add_scatter(x=steps, y=[r.get("loss") for r in recs], name="train loss", mode="lines",
                        line=dict(color="#9aa5b1"))
        val = [(r["step"], r["val_loss"]) for r in recs if r.get("val_loss") is not None]
        if val:
            fig.add_scatter(x=[s for s, _ in val], y=[v for _, v in val], name="val loss",
                            mode="lines+markers", line=dict(color="#ef553b"))
        if self._fit is not None and self._fit.fitted is not None:
            # the laws describe the loss after warmup: forecast from there on; points with a loss
            # below the fit's floor or a band wider than the loss are not drawn (livefit.forecast)
            T, start = self._fit.lrs.size, self._fit.schedule.warmup
            grid = plots.display_steps(T, 400)
            fc = self._fit.forecast(grid[grid >= start])
            if fc.final is not None and fc.ok:
                fig.add_scatter(x=fc.steps, y=fc.shown(fc.high), mode="lines", line=dict(width=0),
                                showlegend=False, hoverinfo="skip")
                fig.add_scatter(x=fc.steps, y=fc.shown(fc.low), mode="lines", line=dict(width=0), fill="tonexty",
                                fillcolor="rgba(99,110,250,0.15)", name=f"{LEVEL:.0%} band", hoverinfo="skip")
                fig.add_scatter(x=fc.steps, y=fc.shown(), name=f"forecast ({self._fit.law})", mode="lines",
                                line=dict(color="#636efa", dash="dash"))
        seen = [r["loss"] for r in recs if r.get("loss") is not None] + [v for _, v in val]
        if seen:   # the observed losses set the scale; a wide early band does not
            lo_y, hi_y = min(seen), max(seen)
            pad = 0.05 * (hi_y - lo_y or 1.0)
            fig.update_yaxes(range=[lo_y - pad, hi_y + pad])
        return fig


# ====================================================================== the app
class Dashboard:
    """One browser session's dashboard over a shared workspace (a directory or a :class:`Workspace`).

    ``user`` is who this session is (the owner of the runs it starts; ``None``: nobody, so it can
    stop or resume only as ``admin``)."""

    def __init__(self, run_dir: str | os.PathLike | Workspace, poll_ms: int = 500, predict: bool = True,
                 user: str | None = None, admin: bool = False):
        self.ws = run_dir if isinstance(run_dir, Workspace) else Workspace(run_dir)
        self.user, self.admin = user, bool(admin)
        self.schedule = ScheduleTab(self.ws, predict=predict)
        self.training = TrainingTab(self.ws, designer=self.schedule, user=user, admin=self.admin)
        self.tabs: list[tuple[str, Any]] = [("Schedule", self.schedule), ("Training", self.training)]
        for title, factory in _optional_tabs():
            try:
                self.tabs.append((title, factory(self.ws)))
            except ImportError as exc:          # a tab whose core is missing is shown as a message
                self.tabs.append((title, _Missing(str(exc))))
        self.poll_ms = int(poll_ms)
        who = "teacher (may stop any run)" if self.admin else (f"user {esc(user)}" if user else "")
        header = pn.pane.HTML(f"<h2 style='margin:4px 0'>workbench</h2><span style='color:#666'>workspace "
                              f"<code>{esc(self.ws.root.name)}</code>{' &middot; ' + who if who else ''}</span>")
        from workbench.widgets.dashboard_tabs import OwnRunFit

        self.own_run = OwnRunFit(self.ws, on_use=self.schedule.use_law)   # a section under the schedule designer
        own = pn.Card(self.own_run.layout, title="Fit your own run (a log file or folder, or upload one)",
                      collapsed=True, sizing_mode="stretch_width")
        views = [(t, pn.Column(obj.layout, own, sizing_mode="stretch_width") if obj is self.schedule else obj.layout)
                 for t, obj in self.tabs]
        self.layout = pn.Column(header, pn.Tabs(*views, dynamic=False), sizing_mode="stretch_width")
        self._callback = None

    def refresh(self) -> None:
        for _t, obj in self.tabs:
            if hasattr(obj, "refresh"):
                obj.refresh()

    def start_polling(self) -> None:
        """Refresh live views every ``poll_ms`` (call inside a served session)."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=self.poll_ms)

    def servable(self):
        pn.state.onload(self.start_polling)
        return self.layout


class _Missing:
    def __init__(self, why: str):
        self.layout = pn.pane.HTML(_message(f"not available: {why}", "error"))


def _optional_tabs():
    """The data-selection and sparsity tabs (their modules import heavier optional parts)."""
    out = []
    try:
        from workbench.widgets.dashboard_tabs import AnglesTab, SparsityTab

        out += [("Data selection", AnglesTab), ("Sparsity", SparsityTab)]
    except ImportError:
        pass
    return out


def _identity(trusted: bool) -> tuple[str | None, bool]:
    """(user id, admin?) of the session being created: from the headers :class:`TokenAuth` set on
    the request when ``trusted`` (sessions signed by ``serve``), else the bokeh session's own id."""
    from workbench.widgets.dashboard_server import ROLE_HEADER, USER_HEADER

    ctx = pn.state.curdoc.session_context if pn.state.curdoc is not None else None
    if ctx is None:
        return None, False
    headers = getattr(getattr(ctx, "request", None), "headers", None) or {}
    if trusted and headers.get(USER_HEADER):
        return str(headers[USER_HEADER]), headers.get(ROLE_HEADER) == "admin"
    return f"session-{ctx.id[:12]}", False


def app(run_dir: str | os.PathLike | Workspace = "workbench-runs", poll_ms: int = 500, trusted: bool = False):
    """A new session's dashboard layout (what ``panel serve`` shows for each browser session)."""
    user, admin = _identity(trusted)
    return Dashboard(run_dir, poll_ms=poll_ms, user=user, admin=admin).servable()


def serve(port: int = 5006, run_dir: str | os.PathLike = "workbench-runs", address: str = "localhost",
          show: bool = False, threaded: bool = False, poll_ms: int = 500, token: str | bool | None = True,
          admin_token: str | bool | None = None, allow_origin=(), max_runs: int | None = None, data_dirs=(),
          resume_runs: bool = True, **kwargs):
    """Serve the dashboard (one :class:`Dashboard` per browser session) on ``address:port``.

    ``token``: ``True`` (default) a random token, a string that token, ``None``/``False`` none (a
    trusted lab). ``admin_token``: ``True`` a random teacher token, a string that token. The URLs to
    open are printed (with the token, like JupyterLab). Websocket origins are always checked: the
    server's own names and addresses, plus ``allow_origin`` (``host:port``; no wildcards). At most
    ``max_runs`` runs train at once (default: the cores); ``data_dirs`` are the folders whose
    checkpoints the Sparsity tab may read; ``resume_runs`` continues runs a restart interrupted.

    Blocks until interrupted unless ``threaded=True`` (then returns the server thread; stop it
    with ``.stop()``). Works offline: panel's resources are served by the server itself.
    """
    import secrets as _secrets

    from workbench.widgets.dashboard_server import TokenAuth, origins, server_secret

    if "websocket_origin" in kwargs:
        raise ValueError("pass extra origins as allow_origin=[host:port, ...]; the origin check cannot be "
                         "turned off")
    if token is True:
        token = _secrets.token_hex(24)
    if admin_token is True:
        admin_token = _secrets.token_hex(24)
    allowed = origins(address, port, allow_origin)        # bad arguments fail before any slow work
    ws = Workspace(run_dir, data_dirs=data_dirs, max_runs=max_runs)
    secret = server_secret(ws.root)
    auth = TokenAuth(token or None, admin_token or None, secret=secret)
    ws.law("annealing")   # fit (or load) the default law once, before the first page asks
    if resume_runs:
        _resume_interrupted(ws)
    pn.extension("plotly", inline=True)
    host = address if address not in ("0.0.0.0", "::", "") else _public_host()
    q = f"?token={token}" if token else ""
    print(f"workbench dashboard: http://{host}:{port}/{q}  (workspace {ws.root}; at most {ws.max_runs} "
          f"runs at once); Ctrl-C stops it", flush=True)
    if admin_token:
        print(f"teacher (admin) address: http://{host}:{port}/?token={admin_token}", flush=True)
    if not token:
        print("no token (--no-token): anyone who can reach this address can use the dashboard", flush=True)
    if not threaded:       # SIGTERM ends the server like Ctrl-C (panel's handler), so runs stop cleanly
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    server = pn.serve({"/": lambda: app(ws, poll_ms, trusted=True)}, port=port, address=address, show=show,
                      threaded=threaded, websocket_origin=allowed, title="workbench", auth_provider=auth,
                      cookie_secret=secret.decode(), sign_sessions=True, secret_key=secret.decode(),
                      generate_session_ids=True, **kwargs)
    if not threaded:       # the server stopped (Ctrl-C): stop the runs with a checkpoint, not mid-step
        stopped = ws.stop_all()
        if stopped:
            print(f"interrupted runs {', '.join(stopped)} with a checkpoint; the next `workbench serve` resumes "
                  f"them", flush=True)
    return server


def _public_host() -> str:
    import socket

    return socket.gethostname()


def _resume_interrupted(ws: Workspace) -> list[str]:
    """Queue every run a crash or restart interrupted that has a checkpoint (its owner keeps it)."""
    from workbench import checkpoint

    resumed = []
    for name in ws.interrupted_runs():
        if not checkpoint.has_checkpoint(ws.run_dir(name)):
            print(f"run {name} was interrupted before its first checkpoint: left as it is", flush=True)
            continue
        try:
            ws.resume_run(name)
        except (ValueError, FileNotFoundError, OSError) as exc:
            print(f"could not resume run {name}: {exc}", flush=True)
            continue
        resumed.append(name)
    if resumed:
        print(f"resuming interrupted runs: {', '.join(resumed)}", flush=True)
    return resumed


if __name__.startswith("bokeh"):          # `panel serve widgets/dashboard.py --args --run-dir DIR`
    pn.extension("plotly", inline=True)
    _args = sys.argv[1:]
    _dir = _args[_args.index("--run-dir") + 1] if "--run-dir" in _args else "workbench-runs"
    app(_dir).servable(title="workbench")
