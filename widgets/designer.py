"""``ScheduleDesigner``: design, compare and export learning-rate schedules in a notebook.

A thin view over :mod:`workbench.schedules` and :mod:`workbench.plots`: every control edits the
arguments of a schedule family, the schedule is rebuilt with ``schedules.make`` and the figure's
traces are replaced with ``plots.schedule_curves``. No maths lives here.

Example:
    >>> from workbench import schedules
    >>> from workbench.widgets import ScheduleDesigner
    >>> d = ScheduleDesigner([schedules.cosine(peak_lr=3e-4, total_steps=10_000, warmup_steps=500)])
    >>> d.controls["peak_lr"].value = 1e-3          # what a slider drag does
    >>> d.schedules[0].peak_lr
    0.001
    >>> d.controls["peak_lr"].label                  # the slider shows the value the schedule holds
    '1e-03'
    >>> d.attach_law("124m")                         # predicted loss from the law fitted to real 124M runs
    >>> d.forecasts[0].ok, d.forecasts[0].final > d.law.floor
    (True, True)
    >>> d.controls["peak_lr"].value = 1e-2           # 10x the fitted runs' LR: greyed, and it says why
    >>> d.forecasts[0].ok, "peak LR 0.01 is outside the fitted curves" in d.law_message.value
    (False, True)
    >>> d  # doctest: +SKIP
"""
from __future__ import annotations

import html
import json
from typing import Any, Callable, Sequence

import ipywidgets as W
import plotly.graph_objects as go

from workbench import plots, schedules
from workbench.schedules import Schedule

LOSS_PANEL = ("x4", "y4")        # the predicted-loss panel's axes in plots.schedule_figure
OUT_OF_DOMAIN = "#9aa5b1"        # grey: a prediction outside the fitted law's domain
NO_LAW = ("no loss law attached: <code>designer.attach_law('124m')</code> (fitted to real 124M runs), "
          "<code>attach_law('tiny')</code> (the bundled tiny runs), <code>attach_law(laws.fit(curves))</code> "
          "or <code>CurveFitter.designer()</code>")

__all__ = ["ScheduleDesigner", "EDITABLE", "lr_label", "lr_options"]

_LR = dict(kind="lr")
_STEPS = dict(kind="steps")
# UI metadata only: which argument gets which kind of control, per family.
EDITABLE: dict[str, dict[str, dict]] = {
    "constant": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS},
    "linear": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS, "min_lr": _LR},
    "cosine": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS, "min_lr": _LR},
    "inverse_sqrt": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS},
    "wsd": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS, "min_lr": _LR,
            "decay_fraction": dict(kind="fraction"), "decay": dict(kind="choice", options=schedules.DECAY_SHAPES)},
    "power": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS, "a": dict(kind="float"),
              "b": dict(kind="float"), "batch_size": dict(kind="int"), "tokens_per_step": dict(kind="int"),
              "decay_steps": _STEPS, "min_lr": _LR,
              "decay": dict(kind="choice", options=schedules.DECAY_SHAPES)},
    "infinite": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS, "cooldown_steps": _STEPS,
                 "anneal_steps": _STEPS, "const_lr": _LR, "min_lr": _LR,
                 "cooldown": dict(kind="choice", options=("inv_sqrt", "cosine", "linear"))},
    "multistep": {"peak_lr": _LR, "total_steps": _STEPS, "warmup_steps": _STEPS,
                  "milestones": dict(kind="list"), "factors": dict(kind="list")},
}
# Arguments a new schedule of each family starts from (a 10k-step run at 3e-4).
_STARTS: dict[str, dict[str, Any]] = {
    "constant": {}, "linear": {"min_lr": 3e-5}, "cosine": {"min_lr": 3e-5}, "inverse_sqrt": {},
    "wsd": {"min_lr": 3e-5, "decay_fraction": 0.2, "decay": "linear"},
    "power": {"a": 4.6, "b": -0.51, "batch_size": 1024, "tokens_per_step": 4_194_304, "decay_steps": 1000,
              "min_lr": 3e-5, "decay": "exponential"},
    "infinite": {"cooldown_steps": 1500, "anneal_steps": 1000, "const_lr": 3e-5, "min_lr": 3e-6},
    "multistep": {"milestones": [0.8, 0.9], "factors": [0.316, 0.1]},
}
_LR_MIN_EXP, _LR_MAX_EXP = -8, 0  # log-slider range: 1e-8 .. 1 (the left end stands for 0)


class ScheduleDesigner(W.VBox):
    """Overlay several schedules, edit their parameters and see LR, S1, S2 (and predicted loss).

    Args:
        schedules: initial schedules (default: one cosine and one WSD, 10k steps).
        predictor: optional callable ``schedule -> predicted loss per step``; its curves are drawn
            in the fourth panel as they come.
        law: a fitted loss law (:class:`workbench.laws.FittedLaw`), or ``"124m"`` (the law fitted to
            real 124M runs) or ``"tiny"`` (fitted to the bundled tiny-model runs); its predictions
            are drawn through :func:`workbench.livefit.forecast`: greyed and dotted outside the fit's
            domain, never below its floor, with the reasons and the fit's warnings under the controls.
        max_points: points drawn per curve (curves are evaluated at every step, then sampled).
        lam: decay factor of the annealing area S2.
    """

    def __init__(self, schedules_: Sequence[Schedule] | None = None, *, predictor: Callable | None = None,
                 law=None, max_points: int = 2000, lam: float = 0.999):
        if schedules_ is None:
            schedules_ = [schedules.cosine(peak_lr=3e-4, total_steps=10_000, warmup_steps=500, min_lr=3e-5),
                          schedules.wsd(peak_lr=3e-4, total_steps=10_000, warmup_steps=500, min_lr=3e-5,
                                        decay_fraction=0.2)]
        self.predictor = predictor
        self.law = None
        self.forecasts: list = []          # per schedule: the law's Forecast (None without a law)
        self.max_points = int(max_points)
        self.lam = float(lam)
        self._entries: list[Schedule] = []
        self._colors: list[str] = []
        self._next_color = 0
        self._building = False
        self.controls: dict[str, W.Widget] = {}

        self.figure = go.FigureWidget(plots.schedule_figure([], max_points=self.max_points))
        self.selector = W.Dropdown(description="schedule", options=[], layout=W.Layout(width="260px"))
        self.family = W.Dropdown(description="family", options=list(EDITABLE), layout=W.Layout(width="260px"))
        self.add_button = W.Button(description="add", icon="plus", tooltip="add a schedule of this family",
                                   layout=W.Layout(width="80px"))
        self.remove_button = W.Button(description="remove", icon="trash", layout=W.Layout(width="90px"))
        self.message = W.HTML()
        self.law_message = W.HTML()
        self.params = W.VBox()
        self.snippet = W.Textarea(description="Python", layout=W.Layout(width="100%", height="60px"))
        self.spec = W.Textarea(description="JSON", layout=W.Layout(width="100%", height="90px"))

        self.selector.observe(self._on_select, "value")
        self.family.observe(self._on_family, "value")
        self.add_button.on_click(lambda _: self.add(self.family.value))
        self.remove_button.on_click(lambda _: self.remove(self.selected))
        top = W.HBox([self.selector, self.family, self.add_button, self.remove_button])
        export = W.Accordion(children=[W.VBox([self.snippet, self.spec])], titles=("export",))
        super().__init__([top, self.params, self.message, self.law_message, self.figure, export])
        if law is not None:
            self.law = _resolve_law(law)
        for s in schedules_:
            self.add(s)
        if self._entries:
            self.select(0)
        self._show_law()

    # ------------------------------------------------------------------ public API
    @property
    def schedules(self) -> list[Schedule]:
        """The designed schedules, in order."""
        return list(self._entries)

    @property
    def selected(self) -> int:
        """Index of the schedule being edited."""
        return int(self.selector.value) if self.selector.value is not None else -1

    def add(self, schedule: Schedule | str) -> int:
        """Add a schedule (or a new one of a family name); returns its index and selects it."""
        if isinstance(schedule, str):
            if schedule not in EDITABLE:
                raise ValueError(f"cannot add family {schedule!r} from the designer; choose one of "
                                 f"{', '.join(EDITABLE)} or add a Schedule object")
            base = self._entries[self.selected] if self._entries else None
            schedule = self._new_of_family(schedule, base)
        if not isinstance(schedule, Schedule):
            raise ValueError(f"expected a Schedule or a family name, got {type(schedule).__name__}")
        self._entries.append(schedule)
        self._colors.append(plots.COLORS[self._next_color % len(plots.COLORS)])
        self._next_color += 1
        self.forecasts.append(None)
        predictor = self.predictor if self.law is None else None
        with self.figure.batch_update():
            for trace, row, col in plots.schedule_traces(schedule, self._name(len(self._entries) - 1),
                                                         self._colors[-1], predictor, self.max_points,
                                                         self.lam):
                self.figure.add_trace(trace, row=row, col=col)
        if self.law is not None:
            self.replace(len(self._entries) - 1, schedule)
        self._refresh_selector()
        self.select(len(self._entries) - 1)
        return len(self._entries) - 1

    def remove(self, index: int) -> None:
        """Remove the schedule at ``index``."""
        if not 0 <= index < len(self._entries):
            raise ValueError(f"index must be in [0, {len(self._entries)}), got {index}")
        del self._entries[index]
        del self._colors[index]
        del self.forecasts[index]
        keep = [t for i, t in enumerate(self.figure.data) if i // 4 != index]
        self.figure.data = keep
        self._rename_traces()
        self._refresh_selector()
        if self._entries:
            self.select(min(index, len(self._entries) - 1))
        else:
            self.params.children = ()
            self.controls = {}
        self._show_law()

    def select(self, index: int) -> None:
        """Edit the schedule at ``index`` with the controls."""
        self._building = True
        try:
            self.selector.value = index
        finally:
            self._building = False
        self._show(index)

    def replace(self, index: int, schedule: Schedule) -> None:
        """Swap in a new schedule at ``index`` and redraw its curves."""
        from workbench.livefit import forecast

        self._entries[index] = schedule
        c = plots.schedule_curves(schedule, self.max_points, self.lam, self.predictor if self.law is None else None)
        fc = None
        if self.law is not None:
            fc = forecast(self.law, schedule, c["step"])
            c["loss"] = fc.mean
        self.forecasts[index] = fc
        traces = self.figure.data[4 * index: 4 * index + 4]
        with self.figure.batch_update():
            for trace, key in zip(traces, ("lr", "s1", "s2", "loss")):
                if c[key] is None:
                    trace.x, trace.y = [], []
                else:
                    trace.x, trace.y = c["step"], c[key]
        # greyed and dotted outside the fit's domain (a restyle of this one trace, outside the batch)
        grey = fc is not None and not fc.ok
        style = (OUT_OF_DOMAIN, "dot") if grey else (self._colors[index], "solid")
        if (traces[3].line.color, traces[3].line.dash) != style:
            traces[3].line.color, traces[3].line.dash = style
        self._update_export()
        self._show_law()

    def set_predictor(self, predictor: Callable | None) -> None:
        """Plug in (or remove) a loss predictor callable and redraw every schedule (a law attached
        with :meth:`attach_law` takes precedence)."""
        self.predictor = predictor
        for i, s in enumerate(self._entries):
            self.replace(i, s)

    def attach_law(self, law) -> None:
        """Draw the predicted loss of a fitted law: a :class:`workbench.laws.FittedLaw`, ``"124m"``
        (fitted to real 124M runs) or ``"tiny"`` (fitted to the bundled tiny runs); ``None`` detaches it."""
        self.law = None if law is None else _resolve_law(law)
        for i, s in enumerate(self._entries):
            self.replace(i, s)
        self._show_law()

    def _show_law(self) -> None:
        """The message under the controls and the loss panel's state: why a prediction is greyed or
        hidden, the fit's warnings, or how to attach a law when none is."""
        has = self.law is not None or self.predictor is not None
        lines = []
        if self.law is not None:
            for i, fc in enumerate(self.forecasts):
                if fc is None:
                    continue
                if fc.ok and fc.final is not None:
                    lines.append(f"{html.escape(self._name(i))}: predicted final loss {fc.final:.4f}")
                else:
                    lines.append(f"<span style='color:#9a6700'>{html.escape(self._name(i))}: no trustworthy "
                                 f"prediction: {html.escape('; '.join(fc.problems))}</span>")
            lines += [f"<span style='color:#9a6700'>fit warning: {html.escape(w)}</span>" for w in self.law.warnings]
        text = "<br>".join(lines)
        if self.law_message.value != text:
            self.law_message.value = text
        annotations = [a for a in self.figure.layout.annotations if a.name != "no-law"]
        if not has:
            annotations.append(dict(name="no-law", text=NO_LAW.replace("<code>", "").replace("</code>", "")
                                    .replace(": ", ":<br>").replace(", ", ",<br>"),
                                    xref=f"{LOSS_PANEL[0]} domain", yref=f"{LOSS_PANEL[1]} domain", x=0.5, y=0.5,
                                    showarrow=False, font=dict(size=11, color="#666")))
        if len(annotations) != len(self.figure.layout.annotations):
            with self.figure.batch_update():
                self.figure.layout.annotations = annotations
                self.figure.layout.xaxis4.visible = has
                self.figure.layout.yaxis4.visible = has

    def to_json(self) -> str:
        """All schedules as a JSON list of ``to_dict()`` specs."""
        return json.dumps([s.to_dict() for s in self._entries], indent=2)

    def to_python(self) -> str:
        """A Python snippet that rebuilds all schedules."""
        lines = ["from workbench import schedules", "", "designed = ["]
        lines += [f"    {s.to_python()}," for s in self._entries]
        return "\n".join(lines + ["]"])

    def save(self, path, index: int | None = None) -> None:
        """Write the selected (or ``index``-th) schedule as a SPEC.json file."""
        schedules.save_schedule(self._entries[self.selected if index is None else index], path)

    # ------------------------------------------------------------------ internals
    def _name(self, i: int) -> str:
        return f"{i + 1}: {self._entries[i].family}"

    def _rename_traces(self) -> None:
        with self.figure.batch_update():
            for i, t in enumerate(self.figure.data):
                name = self._name(i // 4)
                t.name, t.legendgroup = name, name
                t.line.color = self._colors[i // 4]

    def _refresh_selector(self) -> None:
        self._building = True
        try:
            self.selector.options = [(self._name(i), i) for i in range(len(self._entries))]
        finally:
            self._building = False

    def _new_of_family(self, family: str, base: Schedule | None) -> Schedule:
        """A schedule of ``family`` with the peak LR, horizon and warmup of ``base`` (if any)."""
        peak = float(getattr(base, "peak_lr", 3e-4))
        total = int(getattr(base, "total_steps", 10_000))
        warm = min(base.warmup if base is not None else 500, total - 1)
        kw = {}
        for k, v in _STARTS[family].items():  # starts are for a 10k-step run at 3e-4: rescale them
            spec = EDITABLE[family][k]["kind"]
            kw[k] = float(f"{v * peak / 3e-4:.6g}") if spec == "lr" else int(v * total / 10_000) if spec == "steps" else v
        return schedules.make(family, peak_lr=peak, total_steps=total, warmup_steps=warm, **kw)

    def _on_select(self, change) -> None:
        if not self._building and change["new"] is not None:
            self._show(change["new"])

    def _show(self, index: int) -> None:
        s = self._entries[index]
        self._building = True
        try:
            if s.family in EDITABLE:
                self.family.value = s.family
        finally:
            self._building = False
        self._build_controls(s)
        self._update_export()

    def _on_family(self, change) -> None:
        if self._building or not self._entries:
            return
        i = self.selected
        new = self._new_of_family(change["new"], self._entries[i])
        self.replace(i, new)
        self._rename_traces()
        self._refresh_selector()
        self.select(i)

    def _build_controls(self, s: Schedule) -> None:
        self.controls = {}
        if s.family not in EDITABLE:
            self.params.children = (W.HTML(f"<i>{s.family}</i> schedules are edited in code: "
                                           f"<code>{s.to_python()[:200]}</code>"),)
            return
        values = s.to_dict()
        for name, spec in EDITABLE[s.family].items():
            w = _control(name, spec, values.get(name), s)
            w.observe(self._on_param, "value")
            self.controls[name] = w
        widgets = list(self.controls.values())
        rows = [W.HBox(widgets[i:i + 3]) for i in range(0, len(widgets), 3)]
        self.params.children = rows
        self.message.value = ""

    def _on_param(self, change) -> None:
        if self._building or not self._entries:
            return
        i = self.selected
        s = self._entries[i]
        kw = {k: v for k, v in s.to_dict().items() if k != "family"}
        try:
            for name, w in self.controls.items():
                kw[name] = _value(name, EDITABLE[s.family][name], w)
            new = schedules.make(s.family, **kw)
        except ValueError as exc:
            self.message.value = f"<span style='color:#c00'>{exc}</span>"
            return
        self.message.value = ""
        for name, w in self.controls.items():  # keep step sliders inside the run
            if EDITABLE[s.family][name]["kind"] == "steps" and name != "total_steps":
                w.max = max(w.value, new.total_steps - 1)
        self.replace(i, new)

    def _update_export(self) -> None:
        if 0 <= self.selected < len(self._entries):
            s = self._entries[self.selected]
            self.snippet.value = s.to_python()
            self.spec.value = s.to_json()


def _control(name: str, spec: dict, value: Any, s: Schedule) -> W.Widget:
    style = {"description_width": "110px"}
    layout = W.Layout(width="330px")
    kind = spec["kind"]
    if kind == "lr":
        v = float(value or 0.0)
        opts = lr_options(v, zero=name != "peak_lr")
        return W.SelectionSlider(options=opts, index=[x for _, x in opts].index(v), description=name,
                                 continuous_update=True, style=style, layout=layout,
                                 tooltip="the left end stands for 0" if name != "peak_lr" else "")
    if kind == "steps":
        if name == "total_steps":
            return W.BoundedIntText(value=int(value), min=1, max=10_000_000, step=100, description=name,
                                    style=style, layout=layout)
        v = int(value) if value is not None else 0
        return W.IntSlider(value=v, min=0, max=max(v, int(s.total_steps) - 1), description=name,
                           continuous_update=True, style=style, layout=layout)
    if kind == "fraction":
        v = 0.1 if value is None else float(value)
        return W.FloatSlider(value=v, min=0.0, max=1.0, step=0.01, description=name, style=style, layout=layout)
    if kind == "choice":
        return W.Dropdown(value=value, options=list(spec["options"]), description=name, style=style, layout=layout)
    if kind == "float":
        return W.FloatText(value=float(value), description=name, style=style, layout=layout)
    if kind == "int":
        return W.IntText(value=int(value), description=name, style=style, layout=layout)
    if kind == "list":
        return W.Text(value=", ".join(str(x) for x in value), description=name, style=style, layout=layout)
    raise ValueError(f"unknown control kind {kind!r}")  # pragma: no cover


def _value(name: str, spec: dict, w: W.Widget) -> Any:
    kind = spec["kind"]
    if kind == "list":
        parts = [p.strip() for p in str(w.value).split(",") if p.strip()]
        try:
            return [int(p) if p.lstrip("-").isdigit() else float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{name} must be a comma-separated list of numbers, got {w.value!r}") from None
    return w.value


def lr_label(v: float) -> str:
    """An LR as the slider shows it: the value the schedule holds, in short form (``3e-04``, ``2.5e-03``).

    Example:
        >>> lr_label(3e-4), lr_label(2.5e-3), lr_label(3.0199e-4), lr_label(0.0)
        ('3e-04', '2.5e-03', '3.0199e-04', '0')
    """
    if v == 0:
        return "0"
    m, e = f"{v:.6e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e):+03d}"


def lr_options(value: float | None = None, zero: bool = False) -> list[tuple[str, float]]:
    """``(label, value)`` options of an LR slider: 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 per decade from
    1e-8 to 1 (and 0 first with ``zero``), plus ``value`` itself if it is not on that grid, so a
    slider always shows and keeps the exact value of the schedule."""
    vals = {float(f"{m}e{e}") for e in range(_LR_MIN_EXP, _LR_MAX_EXP) for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)}
    vals.add(10.0 ** _LR_MAX_EXP)
    if zero:
        vals.add(0.0)
    if value is not None:
        vals.add(float(value))
    return [(lr_label(v), v) for v in sorted(vals)]


def _resolve_law(law):
    """A FittedLaw from a FittedLaw or a source name (``"124m"``, ``"tiny"``: the annealing law)."""
    from workbench import laws

    if isinstance(law, laws.FittedLaw):
        return law
    if isinstance(law, str):
        from workbench.workspace import SOURCES, default_law

        if law in SOURCES:
            return default_law("annealing", source=law)
    raise ValueError(f"attach a FittedLaw (e.g. laws.fit(curves)) or one of '124m', 'tiny'; got {law!r}")
