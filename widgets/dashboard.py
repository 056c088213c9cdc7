"""The classroom dashboard: ``workbench serve`` - the four tools in one panel app, no notebook needed.

Tabs: **Schedule** (design a schedule, see its predicted loss from the law fitted to real 124M runs
or to the bundled tiny runs, greyed with the reasons outside the fit's domain, save it), **Training** (start a short run of the tiny model from the page and watch its loss
with the live loss-law forecast), **Data selection** (angle concentration of a generated task,
the GAIN sampler's subset highlighted live, export of the chosen indices) and **Sparsity** (diff
two checkpoints, heatmap of update sparsity at any tolerance, drill-down on a matrix).

Every browser session gets its own :class:`Dashboard` (its own controls and plots); what matters is
saved in the shared :class:`~workbench.workspace.Workspace` (``--run-dir``), so a restart loses
nothing and sessions never overwrite each other's runs. The tabs are views over the core
(:mod:`workbench.schedules`, :mod:`workbench.plots`, :mod:`workbench.livefit`, ...): no maths here.

Start it with ``workbench serve [--port P] [--run-dir DIR]`` (localhost) or
``panel serve widgets/dashboard.py --args --run-dir DIR``.

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
import os
import sys
import warnings
from typing import Any

import numpy as np
import panel as pn
import plotly.graph_objects as go

from workbench import plots, schedules
from workbench.workspace import SOURCES, Workspace, default_law

__all__ = ["Dashboard", "ScheduleTab", "TrainingTab", "app", "serve", "lr_options"]

MAX_POINTS = 1000        # points per drawn curve: plenty for a plot, and half the work of 2000 per redraw
OUT_OF_DOMAIN = "#9aa5b1"  # grey: a prediction outside the fitted law's domain
FAMILIES = ("cosine", "wsd", "linear", "constant", "inverse_sqrt", "infinite")


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


def _message(text: str, kind: str = "info") -> str:
    color = {"info": "#555", "ok": "#1a7f37", "warn": "#9a6700", "error": "#b42318"}[kind]
    return f'<span style="color:{color}">{text}</span>'


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
        self.forecasts: list = []
        self.lr_opts, self.min_opts = lr_options(), lr_options(-7, -1, zero=True)
        c = self.controls = {
            "family": pn.widgets.Select(label="family", options=list(FAMILIES), value="cosine"),
            "peak_lr": pn.widgets.DiscreteSlider(label="peak LR", options=self.lr_opts,
                                                 value=_nearest(self.lr_opts, 3e-3)),
            "min_lr": pn.widgets.DiscreteSlider(label="min LR", options=self.min_opts,
                                                value=_nearest(self.min_opts, 3e-4)),
            "total_steps": pn.widgets.IntInput(label="total steps", value=10_000, start=1, step=100),
            "warmup_steps": pn.widgets.IntInput(label="warmup steps", value=500, start=0, step=50),
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
        kw = {"peak_lr": c["peak_lr"].value, "total_steps": int(c["total_steps"].value),
              "warmup_steps": int(c["warmup_steps"].value)}
        if fam in ("cosine", "linear", "wsd", "infinite"):
            kw["min_lr"] = c["min_lr"].value
        if fam == "wsd":
            kw.update(decay_fraction=c["decay_fraction"].value, decay=c["decay"].value)
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
        fig = plots.schedule_figure_dict(scheds, names=names, max_points=MAX_POINTS)
        fig["layout"]["uirevision"] = "designer"
        text = self._draw_forecasts(fig, scheds, names) if self.predict else ""
        self.plot.object = fig
        self.redraws += 1
        self.status.object = text

    def fitted_law(self):
        """The law that predicts the loss (the "predicted by" and "loss law" choices)."""
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
            who = "" if i == 0 else f"{html.escape(n)}: "
            if fc.ok and fc.final is not None:
                lines.append(_message(f"{who}predicted final loss {fc.final:.4f}"))
            else:
                lines.append(_message(f"{who}no trustworthy prediction: " + html.escape("; ".join(fc.problems)),
                                      "warn"))
        about = f"{self.law.value} {SOURCES[self.source.value]}"
        lines.append(_message(f"({html.escape(about)})"))
        lines += [_message("fit warning: " + html.escape(w), "warn") for w in fitted.warnings]
        return "<br>".join(lines)

    def save(self, name: str | None = None) -> str | None:
        """Save the designed schedule as ``schedules/NAME.json`` in the workspace."""
        name = (name or self.name.value or "").strip() or f"schedule-{_stamp()}"
        try:
            self.ws.save_schedule(name, self.current())
        except ValueError as exc:
            self.status.object = _message(str(exc), "error")
            return None
        self.compare.options = self.ws.schedule_names()
        self.status.object = _message(f"saved {name} in {self.ws.path('schedules', name)}", "ok")
        return name


# ====================================================================== live training
class TrainingTab:
    """Start a run of the tiny model from the page and watch it: loss, val loss and the live
    loss-law forecast (:class:`workbench.livefit.LiveFit` following the run log)."""

    DESIGNED = "(designed schedule)"

    def __init__(self, ws: Workspace, designer: ScheduleTab | None = None):
        self.ws, self.designer = ws, designer
        self.run_name = pn.widgets.TextInput(label="run name", placeholder="default: run-<time>")
        self.data = pn.widgets.Select(label="data", options=["stdlib", "docs"], value="stdlib")
        self.sched = pn.widgets.Select(label="schedule", options=self._schedule_options())
        self.steps = pn.widgets.IntInput(label="steps", value=200, start=1, step=50)
        self.batch = pn.widgets.IntInput(label="batch size", value=8, start=1)
        self.seq_len = pn.widgets.IntInput(label="sequence length", value=64, start=8, step=8)
        self.eval_interval = pn.widgets.IntInput(label="evaluate every", value=10, start=1)
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
        """The TrainConfig the form describes."""
        from workbench.train import TrainConfig

        steps = int(self.steps.value)
        sched = self._schedule(steps)
        if steps > sched.total_steps:
            raise ValueError(f"steps={steps} is past the schedule's {sched.total_steps} steps; lower "
                             f"steps or design a longer schedule")
        return TrainConfig(model="tiny", data=self.data.value, schedule=sched, steps=steps,
                           batch_size=int(self.batch.value), seq_len=int(self.seq_len.value),
                           eval_interval=int(self.eval_interval.value), eval_batches=4,
                           checkpoint_interval=max(50, steps // 4), max_tokens=2_000_000, progress=False)

    def start(self) -> str | None:
        """Start the run described by the form in a background thread; returns its name."""
        self.sched.options = self._schedule_options()
        try:
            name = self.ws.unique_name("runs", (self.run_name.value or "").strip() or f"run-{_stamp()}")
            self.ws.start_run(name, self.config())
        except (ValueError, FileNotFoundError) as exc:
            self.status.object = _message(str(exc), "error")
            return None
        self.runs.options = self.ws.names("runs")
        self.runs.value = name
        self._follow()
        self.status.object = _message(f"started {name}", "ok")
        return name

    def stop(self) -> None:
        if self.runs.value:
            self.ws.stop_run(self.runs.value, wait=None)
            self.status.object = _message(f"stopping {self.runs.value} after its current step")

    def resume(self) -> None:
        name = self.runs.value
        if not name:
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
        if name:
            try:
                self._fit = LiveFit.from_run_log(self.ws.run_dir(name), law="multipower", min_points=8,
                                                 refit_every=5, min_interval_s=0.5)
            except (ValueError, FileNotFoundError) as exc:
                self.status.object = _message(str(exc), "error")
        self.refresh()

    def refresh(self) -> None:
        """Read new log lines of the shown run and redraw (the server calls this periodically)."""
        current = self.ws.names("runs")
        if current != list(self.runs.options):
            self.runs.options = current
        if self._fit is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = self._fit.poll()
        status = self.ws.run_status(self._followed)
        if not new and self.points:
            self.status.object = self._status_text(status)
            return
        self.points += new
        self.plot.object = self._figure()
        self.status.object = self._status_text(status)
        self._save_fit()

    def _save_fit(self) -> None:
        """Keep the run's latest forecast fit as ``fits/RUN.json`` (a restart loses nothing)."""
        fit = self._fit
        if fit is None or fit.fitted is None or fit.refits == self._saved_refits:
            return
        try:
            fit.fitted.save(self.ws.path("fits", self._followed))
            self._saved_refits = fit.refits
        except (OSError, ValueError) as exc:
            self.status.object += _message(f"<br>could not save the fit: {exc}", "error")

    def _status_text(self, status: dict) -> str:
        from workbench.train import status_text

        state = status_text(status["summary"]) if status.get("summary") else status["state"]  # "stopped at 40 of .."
        text = f"<b>{self._followed}</b>: {state}, step {status['step']}"
        rep = self._fit.report() if self._fit is not None and self._fit._last_step >= 0 else {}
        if rep.get("forecast"):
            text += (f"<br>forecast final loss {rep['final_loss']:.3f} "
                     f"[{rep['final_low']:.3f}, {rep['final_high']:.3f}] ({rep['level']:.0%} band, "
                     f"{rep['loss_key']})")
        elif rep.get("reason"):
            text += f"<br>no forecast: {html.escape(rep['reason'])}"
        for w in rep.get("warnings", []):
            text += f"<br>fit warning: {html.escape(w)}"
        if status.get("error"):
            text += f"<br>{status['error']}"
        return _message(text, "error" if status["state"] == "failed" else "info")

    def _figure(self):
        from workbench.livefit import LEVEL
        from workbench.runlog import latest_per_step, read_run_log

        fig = self._empty()
        log = self.ws.run_dir(self._followed) / "log.jsonl"
        if not log.exists():
            return fig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recs = latest_per_step(read_run_log(log))
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
    """One browser session's dashboard over a shared workspace directory."""

    def __init__(self, run_dir: str | os.PathLike, poll_ms: int = 500, predict: bool = True):
        self.ws = Workspace(run_dir)
        self.schedule = ScheduleTab(self.ws, predict=predict)
        self.training = TrainingTab(self.ws, designer=self.schedule)
        self.tabs: list[tuple[str, Any]] = [("Schedule", self.schedule), ("Training", self.training)]
        for title, factory in _optional_tabs():
            try:
                self.tabs.append((title, factory(self.ws)))
            except ImportError as exc:          # a tab whose core is missing is shown as a message
                self.tabs.append((title, _Missing(str(exc))))
        self.poll_ms = int(poll_ms)
        header = pn.pane.HTML(f"<h2 style='margin:4px 0'>workbench</h2><span style='color:#666'>workspace "
                              f"<code>{self.ws.root}</code></span>")
        self.layout = pn.Column(header, pn.Tabs(*[(t, obj.layout) for t, obj in self.tabs], dynamic=False),
                                sizing_mode="stretch_width")
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


def app(run_dir: str | os.PathLike = "workbench-runs", poll_ms: int = 500):
    """A new session's dashboard layout (what ``panel serve`` shows for each browser session)."""
    return Dashboard(run_dir, poll_ms=poll_ms).servable()


def serve(port: int = 5006, run_dir: str | os.PathLike = "workbench-runs", address: str = "localhost",
          show: bool = False, threaded: bool = False, poll_ms: int = 500, **kwargs):
    """Serve the dashboard (one :class:`Dashboard` per browser session) on ``address:port``.

    Blocks until interrupted unless ``threaded=True`` (then returns the server thread; stop it
    with ``.stop()``). Works offline: panel's resources are served by the server itself.
    """
    Workspace(run_dir).law("annealing")   # fit (or load) the default law once, before the first page asks
    pn.extension("plotly", inline=True)
    websocket_origin = kwargs.pop("websocket_origin", [f"{address}:{port}", f"127.0.0.1:{port}",
                                                       f"localhost:{port}"])
    return pn.serve({"/": lambda: app(run_dir, poll_ms)}, port=port, address=address, show=show,
                    threaded=threaded, websocket_origin=websocket_origin, title="workbench", **kwargs)


if __name__.startswith("bokeh"):          # `panel serve widgets/dashboard.py --args --run-dir DIR`
    pn.extension("plotly", inline=True)
    _args = sys.argv[1:]
    _dir = _args[_args.index("--run-dir") + 1] if "--run-dir" in _args else "workbench-runs"
    app(_dir).servable(title="workbench")
