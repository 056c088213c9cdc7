"""``LiveTraining``: watch a training run as it trains, with stop and pause buttons.

A thin view over the trainer's events (:mod:`workbench.train`): every event is kept, the
figure is redrawn at most every ``min_interval`` seconds (throttled), and training runs in a
background thread so the buttons work and the notebook stays usable while it trains. Events
with per-domain validation losses (``val_losses: {domain: loss}``, a run with several
validation sets such as a continual run) get one "val <domain>" curve per domain in the loss panel.

Example:
    >>> from workbench.train import TrainConfig
    >>> from workbench.widgets import LiveTraining
    >>> live = LiveTraining()
    >>> live.start(TrainConfig(steps=20, batch_size=4, seq_len=32, max_tokens=20_000,
    ...                        eval_interval=10, progress=False))   # doctest: +SKIP
    >>> live                                                        # doctest: +SKIP
    >>> summary = live.wait()                                       # doctest: +SKIP
"""
from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["LiveTraining"]

# (panel title, event key, row, col, trace name)
_SERIES = (
    ("loss", "loss", 1, 1, "train loss"),
    ("loss", "val_loss", 1, 1, "val loss"),
    ("learning rate", "lr", 1, 2, "lr"),
    ("grad norm", "grad_norm", 2, 1, "grad norm"),
    ("tokens / s", "tokens_per_s", 2, 2, "tokens/s"),
)
MAX_POINTS = 4000  # per trace; longer runs are drawn with every k-th point (all events are kept)


class LiveTraining(W.VBox):
    """Live plots of loss and val loss, LR, grad norm and throughput, fed by training events.

    Use it as a subscriber (``callbacks=[live.update]``) of any run, or let it run one:
    ``live.start(config_or_trainer)`` trains in a background thread; ``stop``/``pause`` buttons act
    while it trains; ``live.wait()`` joins the thread and returns the run summary (re-raising a
    training error). ``min_interval`` throttles redraws (seconds).
    """

    def __init__(self, min_interval: float = 0.25, title: str = "training"):
        self.min_interval = float(min_interval)
        self.events: list[dict] = []
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self.trainer = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_draw = float("-inf")  # the first event draws at once
        self._dirty = False
        self._domain_traces: dict = {}    # domain -> trace index, added as domains appear

        titles = ("loss", "learning rate", "grad norm", "tokens / s")
        fig = make_subplots(rows=2, cols=2, subplot_titles=titles, vertical_spacing=0.16, horizontal_spacing=0.1)
        for _, key, row, col, name in _SERIES:
            mode = "markers+lines" if key == "val_loss" else "lines"
            fig.add_trace(go.Scatter(x=[], y=[], name=name, mode=mode), row=row, col=col)
        fig.update_xaxes(title_text="step", row=2)
        fig.update_yaxes(exponentformat="e", row=1, col=2)
        fig.update_layout(height=520, template="plotly_white", margin=dict(l=60, r=20, t=50, b=40),
                          title=title, legend=dict(orientation="h", y=-0.14))
        self.figure = go.FigureWidget(fig)
        self.status = W.HTML("idle")
        self.stop_button = W.Button(description="stop", icon="stop", button_style="danger", disabled=True)
        self.pause_button = W.ToggleButton(description="pause", icon="pause", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.pause_button.observe(self._on_pause, "value")
        super().__init__([W.HBox([self.stop_button, self.pause_button, self.status]), self.figure])

    # ------------------------------------------------------------------ feeding
    def update(self, event: dict) -> None:
        """Subscriber: record one training event and redraw if the throttle allows."""
        with self._lock:
            self.events.append(dict(event))
            self._dirty = True
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval:
            self.redraw()

    __call__ = update

    def redraw(self) -> None:
        """Draw every recorded event now (thread-safe)."""
        with self._lock:
            events = list(self.events)
            self._dirty = False
        self._last_draw = time.monotonic()
        with self.figure.batch_update():
            for trace, (_, key, *_rest) in zip(self.figure.data, _SERIES):
                xs = [e["step"] for e in events if e.get(key) is not None]
                ys = [e[key] for e in events if e.get(key) is not None]
                stride = max(1, len(xs) // MAX_POINTS)
                if stride > 1 and key != "val_loss":
                    xs, ys = xs[::stride] + xs[-1:], ys[::stride] + ys[-1:]
                trace.x, trace.y = xs, ys
            domains = list(dict.fromkeys(d for e in events for d in (e.get("val_losses") or {})))
            for d in domains:
                if d not in self._domain_traces:
                    self.figure.add_trace(go.Scatter(x=[], y=[], name=f"val {d}", mode="markers+lines"),
                                          row=1, col=1)
                    self._domain_traces[d] = len(self.figure.data) - 1
                pts = [(e["step"], e["val_losses"][d]) for e in events
                       if (e.get("val_losses") or {}).get(d) is not None]
                trace = self.figure.data[self._domain_traces[d]]
                trace.x, trace.y = [p[0] for p in pts], [p[1] for p in pts]
        if events:
            e = events[-1]
            val = [x["val_loss"] for x in events if x.get("val_loss") is not None]
            parts = [f"step <b>{e['step'] + 1}</b>", f"loss {e.get('loss', float('nan')):.4f}"]
            if val:
                parts.append(f"val {val[-1]:.4f}")
            if e.get("tokens_per_s"):
                parts.append(f"{e['tokens_per_s']:,.0f} tok/s")
            self.status.value = " · ".join(parts) + self._state_suffix()

    def _state_suffix(self) -> str:
        if self.error is not None:
            return f" · <span style='color:#c00'>error: {self.error}</span>"
        if self.summary is not None:
            return f" · {self.summary.get('status', 'done')}"
        if self.pause_button.value:
            return " · paused"
        return ""

    # ------------------------------------------------------------------ running a trainer
    def start(self, trainer_or_config: Any, **trainer_kwargs) -> "LiveTraining":
        """Train in a background thread: a ``workbench.train.Trainer`` or a ``TrainConfig``.

        Extra keyword arguments go to ``Trainer(...)`` (``model=``, ``train_data=``, ...).
        """
        from workbench.train import TrainConfig, Trainer

        if self._thread is not None and self._thread.is_alive():
            raise ValueError("a run is already training in this view; stop it or wait() first")
        if isinstance(trainer_or_config, TrainConfig):
            trainer = Trainer(trainer_or_config, **trainer_kwargs)
        elif isinstance(trainer_or_config, Trainer):
            if trainer_kwargs:
                raise ValueError("keyword arguments are for building a Trainer from a TrainConfig")
            trainer = trainer_or_config
        else:
            raise ValueError(f"start() takes a Trainer or a TrainConfig, got {type(trainer_or_config).__name__}")
        self.trainer = trainer
        trainer.subscribe(self.update)
        self.summary, self.error = None, None
        self.stop_button.disabled = False
        self.pause_button.disabled = False
        self.status.value = "starting..."
        self._thread = threading.Thread(target=self._run, name="workbench-train", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.summary = self.trainer.run()
        except BaseException as exc:  # shown in the view and re-raised by wait()
            self.error = exc
        finally:
            self.stop_button.disabled = True
            self.pause_button.disabled = True
            self.redraw()

    def stop(self) -> None:
        """Ask the running trainer to stop (it checkpoints and writes its summary)."""
        if self.trainer is not None:
            self.trainer.stop_event.set()
            self.trainer.pause_event.clear()

    def pause(self, paused: bool = True) -> None:
        """Pause (``True``) or resume (``False``) the running trainer."""
        self.pause_button.value = bool(paused)

    def _on_pause(self, change) -> None:
        if self.trainer is None:
            return
        if change["new"]:
            self.trainer.pause_event.set()
        else:
            self.trainer.pause_event.clear()
        self.pause_button.description = "resume" if change["new"] else "pause"
        self.redraw()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> dict | None:
        """Join the training thread; return the run summary or re-raise the training error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        self.redraw()
        if self.error is not None:
            raise self.error
        return self.summary

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one event key, as recorded (e.g. ``live.series("val_loss")``);
        ``"val_losses:<domain>"`` gives one domain's validation loss."""
        with self._lock:
            if key.startswith("val_losses:"):
                d = key.split(":", 1)[1]
                pts = [(e["step"], e["val_losses"][d]) for e in self.events
                       if (e.get("val_losses") or {}).get(d) is not None]
            else:
                pts = [(e["step"], e[key]) for e in self.events if e.get(key) is not None]
        if not pts:
            return np.array([], dtype=np.int64), np.array([])
        s, v = zip(*pts)
        return np.asarray(s), np.asarray(v, dtype=np.float64)

