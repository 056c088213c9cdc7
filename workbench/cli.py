"""The ``workbench`` command line.

Each subcommand lives in a small ``_add_<name>`` function that registers its parser and
points ``func`` at the code that runs it; heavy imports happen inside the handlers so
``workbench --help`` stays instant.

Example::

    $ workbench --help
    $ workbench schedule export spec.json --csv lr.csv
"""
from __future__ import annotations

import argparse
import json
import sys


def _add_schedule(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="export or plot a learning-rate schedule (SPEC.json)")
    ssub = p.add_subparsers(dest="schedule_cmd", required=True, metavar="{export,plot}")
    e = ssub.add_parser("export", help="write step,lr for every step of SPEC.json as CSV")
    e.add_argument("spec", help="schedule file written by Schedule.to_dict() (SPEC.json)")
    e.add_argument("--csv", required=True, dest="out", help="output CSV path")
    e.set_defaults(func=_schedule_export)
    pl = ssub.add_parser("plot", help="plot SPEC.json to a PNG or HTML file")
    pl.add_argument("spec", help="schedule file written by Schedule.to_dict() (SPEC.json)")
    pl.add_argument("-o", "--output", required=True, help="output file, .png or .html")
    pl.set_defaults(func=_schedule_plot)


def _schedule_export(args: argparse.Namespace) -> int:
    from workbench import schedules

    sched = schedules.load_schedule(args.spec)
    n = schedules.export_csv(sched, args.out)
    print(f"wrote {n} steps to {args.out}")
    return 0


def _schedule_plot(args: argparse.Namespace) -> int:
    from workbench import plots, schedules

    sched = schedules.load_schedule(args.spec)
    plots.save_schedule_plot([sched], args.output)
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------- train / runs
_TRAIN_FLAGS = {  # flag dest -> TrainConfig field
    "model": "model", "data": "data", "tokenizer": "tokenizer", "steps": "steps", "lr": "lr",
    "warmup_steps": "warmup_steps", "optimizer": "optimizer", "weight_decay": "weight_decay",
    "optimizer_kwargs": "optimizer_kwargs",
    "batch_size": "batch_size", "seq_len": "seq_len", "grad_accum": "grad_accum",
    "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_batches": "eval_batches",
    "checkpoint_interval": "checkpoint_interval", "checkpoint_minutes": "checkpoint_minutes",
    "target_val_loss": "target_val_loss",
    "max_tokens": "max_tokens", "seed": "seed", "device": "device", "compile": "compile", "log": "log",
    "parallel": "parallel", "activation_checkpointing": "activation_checkpointing",
}
_RESUME_FLAGS = ("steps", "device", "compile", "log")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"rank\": 32}}', got {text!r}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (or --resume a run) into a run directory",
        description="Train a model with a learning-rate schedule. A run directory holds one run: "
                    "config.json, log.jsonl (one line per step), checkpoints/ (the last checkpoint, "
                    "written as one unit), model.safetensors (its weights) and summary.json. Ctrl-C or "
                    "SIGTERM once stops after the current step with a checkpoint (twice: at once); "
                    "--resume DIR continues it. One process at a time may train in a run directory.")
    p.add_argument("--run-dir", help="new directory for this run (must not hold a run already)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint "
                   "with its saved configuration (only --steps, --device, --compile may be given)")
    p.add_argument("--model", help="preset (tiny, llama-10m, gpt2-30m, ...) or a local model dir [tiny]")
    p.add_argument("--data", help="stdlib, docs, or a local file/dir [stdlib]")
    p.add_argument("--tokenizer", help="byte, bpe or a tokenizer.json path [byte]")
    p.add_argument("--steps", type=int, help="stop after this many steps; with a family name also the "
                   "schedule's horizon (default with a SPEC.json: its total_steps)")
    p.add_argument("--schedule", help="SPEC.json (a schedule's to_dict()) or a family name [cosine]")
    p.add_argument("--lr", type=float, help="peak LR for a family name [3e-3]")
    p.add_argument("--warmup-steps", type=int, help="warmup for a family name [0]")
    p.add_argument("--optimizer", help="adamw, adam, sgd, apollo, apollo-mini, galore, frugal, lamb or lion "
                   "(low-rank ones project attention/MLP weights; the rest gets AdamW) [adamw]")
    p.add_argument("--optimizer-kwargs", type=_json_object, metavar="JSON",
                   help='extra optimizer arguments as JSON, e.g. \'{"rank": 32, "update_proj_gap": 100}\'')
    p.add_argument("--weight-decay", type=float,
                   help="decay of the weight matrices [0.1 for adamw, 0.01 for lamb, else 0]")
    p.add_argument("--batch-size", type=int, help="sequences per rank per micro-step [8]")
    p.add_argument("--seq-len", type=int, help="tokens per sequence [128]")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step [1]")
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off [1.0]")
    p.add_argument("--eval-interval", type=int, help="evaluate every N steps (and at the end) [100]")
    p.add_argument("--eval-batches", type=int, help="validation batches per evaluation [20]")
    p.add_argument("--checkpoint-interval", type=int, help="checkpoint every N steps (and at the end); 0: only "
                   "by time [a tenth of --steps, at most 500]")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint after this much wall time; 0: off [10]")
    p.add_argument("--target-val-loss", type=float, help="report the train time until val loss reaches this")
    p.add_argument("--max-tokens", type=int, help="use only the first N tokens of the data")
    p.add_argument("--seed", type=int, help="seed for weights and data order [0]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--parallel", choices=("auto", "none", "ddp", "fsdp"),
                   help="under torchrun: ddp (replicas) or fsdp (FSDP2: parameters, gradients and optimizer "
                        "state sharded over the ranks, sharded checkpoints) [auto: ddp under torchrun]")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="with --parallel fsdp: recompute each block's activations in the backward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log", metavar="SINKS", help="also write the run for tensorboard and/or wandb (comma-separated; "
                                                  "HF tag names, next to log.jsonl, W&B offline)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import signal
    import threading

    from workbench import train as tr

    given = {field: getattr(args, dest) for dest, field in _TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    stop = threading.Event()
    if args.resume:
        extra = sorted(f"--{k.replace('_', '-')}" for k in given if k not in _RESUME_FLAGS)
        if extra or args.schedule is not None:
            extra += ["--schedule"] if args.schedule is not None else []
            raise ValueError(f"--resume continues with the run's saved configuration; drop {', '.join(extra)} "
                             f"(only --steps, --device and --compile can change), or start a new --run-dir")
        if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
            raise ValueError("give either --run-dir (a new run) or --resume DIR (continue one), not both")
        config = tr.load_config(args.resume)
        config = dataclasses.replace(config, run_dir=args.resume, progress=not args.no_progress, **given)
    else:
        if not args.run_dir:
            raise ValueError("--run-dir DIR is required: the directory that will hold this run's log and "
                             "checkpoints (or --resume DIR to continue a run)")
        schedule = args.schedule if args.schedule is not None else "cosine"
        if schedule.endswith(".json") or os.path.isfile(schedule):
            from workbench import schedules

            clash = [f for f in ("--lr", "--warmup-steps") if getattr(args, f[2:].replace("-", "_")) is not None]
            if clash:
                raise ValueError(f"{schedule} sets the LR and warmup; drop {', '.join(clash)} or pass a family name")
            schedule = schedules.load_schedule(schedule).to_dict()
        config = tr.TrainConfig(run_dir=args.run_dir, schedule=schedule, progress=not args.no_progress, **given)
    trainer = tr.Trainer(config, resume=bool(args.resume), stop_event=stop)
    try:   # SIGINT/SIGTERM: the trainer stops after its step with a checkpoint (workbench.interrupts)
        summary = trainer.run()
    except tr.TrainingDiverged as exc:
        print(f"workbench train: {exc}", file=sys.stderr)
        return 1
    if trainer.is_main:
        print(_format_runs([summary]))
        if summary["status"] in ("stopped", "interrupted") or summary["steps"] < summary["total_steps"]:
            print(f"continue with: workbench train --resume {config.run_dir}"
                  + (" --steps N" if summary["status"] == "completed" else ""), flush=True)
    if trainer.interrupted_by:
        return 128 + int(getattr(signal, trainer.interrupted_by))
    return 0


def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="inspect training run directories")
    rsub = p.add_subparsers(dest="runs_cmd", required=True, metavar="{show}")
    s = rsub.add_parser("show", help="print the summary of one or more runs as a table")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    s.add_argument("--json", action="store_true", help="print the summaries as JSON")
    s.set_defaults(func=_runs_show)


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return str(value)[:40]          # a hand-edited summary.json: show it as it is
    if kind == "int":
        return f"{int(value):,}"
    if kind == "time":
        return f"{value:.1f} s"
    if kind == "rate":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _status_text(s: dict) -> str:
    from workbench.train import status_text

    return status_text(s)


def _format_runs(summaries: list[dict]) -> str:
    rows = [
        ("run", lambda s: _fmt(s.get("run_dir"))),
        ("status", _status_text),
        ("model", lambda s: _fmt(s.get("model"))),
        ("steps", lambda s: f"{_fmt(s.get('steps'), 'int')} / {_fmt(s.get('total_steps'), 'int')}"),
        ("tokens", lambda s: _fmt(s.get("tokens"), "int")),
        ("final train loss", lambda s: _fmt(s.get("final_train_loss"))),
        ("final val loss", lambda s: _fmt(s.get("final_val_loss"))),
        ("best val loss", lambda s: _fmt(s.get("best_val_loss")) + (
            f" (step {s['best_val_step']})" if s.get("best_val_step") is not None else "")),
        ("target val loss", lambda s: _fmt(s.get("target_val_loss"))),
        ("time to target", lambda s: _fmt(s.get("time_to_target"), "time") if s.get("time_to_target") is not None
            else ("not reached" if s.get("target_val_loss") is not None else "-")),
        ("train time", lambda s: _fmt(s.get("train_time"), "time")),
        ("tokens/s", lambda s: _fmt(s.get("tokens_per_s"), "rate")),
        ("parameters", lambda s: _fmt(s.get("parameters"), "int")),
        ("device", lambda s: _fmt(s.get("device"))),
    ]
    cells = [[label] + [get(s) for s in summaries] for label, get in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _runs_show(args: argparse.Namespace) -> int:
    import json

    from workbench.train import run_summary

    summaries = [run_summary(d) for d in args.dirs]
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))
    else:
        print(_format_runs(summaries))
    return 0


def _add_assets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="list or regenerate the bundled run logs and pretrained checkpoint")
    asub = p.add_subparsers(dest="assets_cmd", required=True, metavar="{list,make}")
    ls = asub.add_parser("list", help="show the bundled runs and checkpoint")
    ls.set_defaults(func=_assets_list)
    mk = asub.add_parser("make", help="retrain the bundled artefacts (~1 h on a 2-core CPU)")
    mk.add_argument("--out", default=None, help="output folder (default: the package's assets folder)")
    mk.add_argument("--only", nargs="+", default=None, help="only these runs (e.g. cosine wsd20)")
    mk.add_argument("--no-runs", action="store_true", help="skip the schedule runs")
    mk.add_argument("--no-pretrained", action="store_true", help="skip the pretrained checkpoint")
    mk.set_defaults(func=_assets_make)


def _for_people(value) -> str:
    """A setting as a person writes it: floats to 4 significant digits (3e-4/10 -> 0.0003), lists itemwise."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_for_people(v) for v in value) + "]"
    if isinstance(value, dict) and "family" in value:
        return _schedule_for_people(value)
    return repr(value)


def _schedule_for_people(spec: dict) -> str:
    """``cosine(peak_lr=0.003, total_steps=1000, warmup_steps=50, min_lr=0.0003)``: unset (None) fields left out."""
    args = ", ".join(f"{k}={_for_people(v)}" for k, v in spec.items() if k != "family" and v is not None)
    return f"{spec['family']}({args})"


def _assets_list(args: argparse.Namespace) -> int:
    from workbench import assets

    for name in assets.RUNS:
        try:
            d = assets.run_dir(name)
            print(f"run {name:10s} {d}  {_schedule_for_people(assets.RUNS[name].to_dict())}")
        except FileNotFoundError:
            print(f"run {name:10s} missing (workbench assets make --only {name})")
    try:
        print(f"pretrained     {assets.pretrained_dir()}")
    except FileNotFoundError:
        print("pretrained     missing (workbench assets make --no-runs)")
    return 0


def _assets_make(args: argparse.Namespace) -> int:
    from workbench import assets

    out = assets.make_assets(args.out, runs=not args.no_runs, pretrained=not args.no_pretrained, only=args.only)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- curves (loss-curve laws)
def _add_curves(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curves", help="fit loss-curve laws to runs and predict other schedules",
                       description="Fit the annealing or multi-power loss law jointly to training curves "
                                   "(CSV step,lr,loss; run logs .jsonl or run directories; W&B .json; "
                                   "TensorBoard event files; HF, Lightning and W&B folders; bundled real curves as "
                                   "assets:124m/RUN) and score its predictions on other runs. The 124M split: "
                                   "`workbench curves fit --split 124m --out fit.json` then "
                                   "`workbench curves predict fit.json --split 124m`.")
    csub = p.add_subparsers(dest="curves_cmd", required=True, metavar="{fit,predict,show}")
    f = csub.add_parser("fit", help="fit a law to one or more loss curves, write FIT.json")
    f.add_argument("train", nargs="*", metavar="TRAIN",
                   help="loss logs with different schedules (or assets:124m/RUN for a bundled real curve)")
    f.add_argument("--split", choices=("124m",), help="fit the train split of a bundled curve set (with --lr)")
    f.add_argument("--lr", type=float, default=1e-3, help="peak LR of the bundled split [1e-3]")
    f.add_argument("--law", choices=("annealing", "multipower"), default="multipower", help="[multipower]")
    f.add_argument("--out", required=True, metavar="FIT.json", help="where to write the fitted law")
    _add_reader_flags(f)
    f.add_argument("--lam", type=float, default=0.999, help="annealing law: decay factor lambda [0.999]")
    f.add_argument("--fit-lam", action="store_true", help="annealing law: fit lambda instead of fixing it")
    f.add_argument("--seed", type=int, default=0, help="seed of the random restarts [0]")
    f.add_argument("--no-validate", action="store_true",
                   help="skip the leave-one-curve-out choice of early stopping (fit to convergence)")
    f.set_defaults(func=_curves_fit)
    pr = csub.add_parser("predict", help="score a fitted law's predictions on other loss curves")
    pr.add_argument("fit", metavar="FIT.json", help="written by `workbench curves fit`")
    pr.add_argument("test", nargs="*", metavar="TEST", help="loss logs to predict (or assets:124m/RUN)")
    pr.add_argument("--split", choices=("124m",), help="predict the test split of a bundled curve set (with --lr)")
    pr.add_argument("--lr", type=float, default=1e-3, help="peak LR of the bundled split [1e-3]")
    pr.add_argument("--band", type=float, default=0.9, metavar="LEVEL",
                    help="report how often the calibrated LEVEL band holds the measured loss [0.9]")
    _add_reader_flags(pr)
    pr.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    pr.set_defaults(func=_curves_predict)
    sh = csub.add_parser("show", help="list the runs and metrics found in files or folders (HF, TensorBoard, "
                                      "W&B, Lightning, run logs) and the keys a fit would use")
    sh.add_argument("paths", nargs="+", metavar="PATH", help="log files or folders (searched at any depth)")
    _add_reader_flags(sh)
    sh.set_defaults(func=_curves_show)


def _add_reader_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="which run of a folder holding several (its name as `curves show` lists it)")
    p.add_argument("--step-key", help="column/key of the step [step, iter, iteration, global_step, "
                                      "trainer/global_step, train/global_step, then _step]")
    p.add_argument("--loss-key", help="column/key of the loss [a validation loss if present, else the train loss]")
    p.add_argument("--lr-key", help="column/key of the learning rate [lr, learning_rate, train/learning_rate, ...]")
    p.add_argument("--schedule", metavar="SPEC.json", help="the run's schedule: a SPEC.json (a schedule's to_dict()) "
                                                           "or an HF TrainingArguments JSON (to_json_string()); the "
                                                           "LR at every step, for logs without one")
    p.add_argument("--step-offset", type=int, help="add this to every step [-1 for HF global_step logs, else 0]")


def _schedule_arg(path: str | None):
    """``--schedule``: a SPEC.json, or the JSON of HF ``TrainingArguments`` (``Schedule.from_hf``)."""
    if not path:
        return None
    from workbench.schedules import Schedule, load_schedule

    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        d = None
    if isinstance(d, dict) and "family" not in d and "lr_scheduler_type" in d:
        try:
            return Schedule.from_hf(d)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return load_schedule(path)


def _read_curve_arg(args: argparse.Namespace, path: str):
    """Read one curve with the reader flags; say on stderr which keys were used."""
    from workbench import curves

    sched = _schedule_arg(getattr(args, "schedule", None))
    c = curves.read_curve(path, run=args.run, loss_key=args.loss_key, lr_key=args.lr_key, step_key=args.step_key,
                          step_offset=args.step_offset, schedule=sched)
    print(f"{path}: {curves.describe_choices(c.meta['choices'])}", file=sys.stderr)
    return c


def _curves_show(args: argparse.Namespace) -> int:
    import warnings

    from workbench import curves

    sched = _schedule_arg(args.schedule)
    for path in args.paths:
        runs = curves.read_runs(path)
        if args.run is not None:
            runs = [curves._select_run(runs, args.run, path)]
        print(f"{path}: {len(runs)} run(s)")
        for r in runs:
            print(f"  {r.name}  [{r.format}, {len(r.records)} records]  {r.path}")
            print(f"    metrics: {', '.join(r.metrics) or 'none'}")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    c = r.curve(loss_key=args.loss_key, lr_key=args.lr_key, step_key=args.step_key,
                                step_offset=args.step_offset, schedule=sched)
                print(f"    reads as: {curves.describe_choices(c.meta['choices'])}")
                print(f"    curve: {len(c)} losses at steps {int(c.steps[0])}..{int(c.steps[-1])}, "
                      f"{c.total_steps} steps of LR, peak {c.peak_lr:.4g}, warmup {c.warmup}")
                for w in caught:
                    print(f"    warning: {w.message}")
            except (ValueError, FileNotFoundError) as exc:
                print(f"    cannot fit as is: {exc}")
    return 0


_METRICS = ("r2", "mae", "rmse", "pred_err", "worst_err")


def _curve_args(args: argparse.Namespace, paths: list[str], part: str) -> list:
    from workbench import assets, curves

    if args.split:
        if paths:
            raise ValueError(f"give either --split or {part.upper()} curves, not both")
        return assets.curves(args.split, lr=args.lr, split=part)
    if not paths:
        raise ValueError(f"no {part} curves: give loss logs (or assets:124m/RUN), or --split 124m")
    return [assets.resolve_curve(p) if p.startswith("assets:") else _read_curve_arg(args, p) for p in paths]


def _curves_fit(args: argparse.Namespace) -> int:
    from workbench import laws

    train = _curve_args(args, args.train, "train")
    fitted = laws.fit(train, law=args.law, lam=None if args.fit_lam else args.lam, seed=args.seed,
                      validate=False if args.no_validate else None)
    fitted.save(args.out)
    info = fitted.info
    print(f"{args.law} law fitted to {len(train)} curve(s), {info['n_points']} points, in {info['time_s']:.2f} s")
    for k, v in fitted.params.items():
        print(f"  {k:6s} {v:.6g}")
    t = info["train"]
    print(f"  train: r2 {t['r2']:.5f}, mean rel. error {100 * t['pred_err']:.3f}%, worst {100 * t['worst_err']:.3f}%")
    val = info.get("validation", {})
    if val.get("method", "none") != "none":
        chosen = val["chosen_max_nfev"]
        print("  leave-one-curve-out validation: " + ("fit to convergence" if chosen == "converged"
                                                      else f"early stopping after {chosen} evaluations"))
    cal = info.get("calibration") or {}
    if cal.get("scale") is not None:
        print(f"  band: {cal['method']}, relative scale {100 * cal['scale']:.3f}%")
    for w in fitted.warnings:
        print(f"  warning: {w}")
    print(f"wrote {args.out}")
    return 0


def _curves_predict(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from workbench import assets, laws

    fitted = laws.FittedLaw.load(args.fit)
    if not 0 < args.band < 1:
        raise ValueError(f"--band must be in (0, 1), got {args.band}")
    test = _curve_args(args, args.test, "test")
    rows, preds, ys, cool, inside = [], [], [], [], []
    for c in test:
        label = c.name if (args.split or c.meta.get("source", "").startswith("assets:")) else c.meta.get("source", c.name)
        keep = c.steps >= c.warmup
        if not keep.any():
            raise ValueError(f"{label}: no losses after the warmup ({c.warmup} steps) to score")
        y = c.losses[keep]
        if fitted.cov is not None:
            pred, lo, hi = fitted.predict(c.lrs, c.steps[keep], band=True, level=args.band, warmup_steps=c.warmup)
            inside.append((y >= lo) & (y <= hi))
        else:
            pred = fitted.predict(c.lrs, c.steps[keep], warmup_steps=c.warmup)
        m = laws.metrics(pred, y)
        row = {"file": label, **{k: m[k] for k in _METRICS}, "_n": m["n"]}
        if c.meta.get("cooldown_start") is not None:
            cm = assets.cooldown_mask(c)[keep]
            if cm.any():
                row["cooldown_pred_err"] = float(np.mean(np.abs(pred[cm] - y[cm]) / y[cm]))
                cool.append((pred[cm], y[cm]))
        rows.append(row)
        preds.append(pred)
        ys.append(y)
    pooled = laws.metrics(np.concatenate(preds), np.concatenate(ys))
    overall = {k: pooled[k] for k in _METRICS}
    if cool:
        pc, yc = np.concatenate([a for a, _ in cool]), np.concatenate([b for _, b in cool])
        overall["cooldown_pred_err"] = float(np.mean(np.abs(pc - yc) / yc))
    if inside:
        overall["band_level"] = args.band
        overall["band_coverage"] = float(np.mean(np.concatenate(inside)))
    if args.json:
        clean = [{k: v for k, v in r.items() if k != "_n"} for r in rows]
        print(json.dumps(laws._json_safe({"curves": clean, "overall": overall, "warnings": fitted.warnings})))
        return 0
    head = ["file", "points", "r2", "mae", "rmse", "mean err %", "worst err %"]
    cells = [head] + [[r["file"], str(r["_n"]), f"{r['r2']:.5f}", f"{r['mae']:.5f}", f"{r['rmse']:.5f}",
                       f"{100 * r['pred_err']:.3f}", f"{100 * r['worst_err']:.3f}"] for r in rows]
    cells.append(["overall", str(pooled["n"]), f"{overall['r2']:.5f}", f"{overall['mae']:.5f}",
                  f"{overall['rmse']:.5f}", f"{100 * overall['pred_err']:.3f}", f"{100 * overall['worst_err']:.3f}"])
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    print(f"{fitted.law} law from {args.fit}")
    for w in fitted.warnings:
        print(f"  warning: {w}")
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    if "cooldown_pred_err" in overall:
        print(f"cooldown points only: mean err {100 * overall['cooldown_pred_err']:.3f}%")
    if "band_coverage" in overall:
        print(f"{100 * args.band:g}% band ({(fitted.info.get('calibration') or {}).get('method', 'laplace')}) holds "
              f"{100 * overall['band_coverage']:.1f}% of the measured losses")
    return 0


# ---------------------------------------------------------------------------- sparsity
def _add_sparsity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sparsity", help="update sparsity between two checkpoints, overlap of updates")
    ssub = p.add_subparsers(dest="sparsity_cmd", required=True, metavar="{diff,overlap}")
    d = ssub.add_parser("diff", help="per-module-type and overall update sparsity of TUNED vs BASE",
                        description="BASE and TUNED: transformers model directories, .safetensors, "
                                    ".bin or .pt files (read with torch.load(weights_only=True)).")
    d.add_argument("base", help="base checkpoint")
    d.add_argument("tuned", help="fine-tuned checkpoint")
    d.add_argument("--atol", type=float, default=1e-5, help="changed when |delta| > ATOL (default 1e-5)")
    d.add_argument("--rtol", type=float, default=None, help="also report changed when |delta| > RTOL*|w|")
    d.add_argument("--json", dest="out", help="write the full diff to OUT.json")
    d.add_argument("--masks", action="store_true", help="keep changed-entry masks in OUT.json (for overlap)")
    d.add_argument("--intersect", action="store_true", help="compare only tensors present in both")
    d.set_defaults(func=_sparsity_diff)
    o = ssub.add_parser("overlap", help="overlap of the updated entries of two diffs saved with --masks")
    o.add_argument("a", help="diff A.json (from `workbench sparsity diff --masks --json`)")
    o.add_argument("b", help="diff B.json")
    o.set_defaults(func=_sparsity_overlap)


def _sparsity_diff(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.sparsity import diff_checkpoints

    if args.masks and not args.out:
        raise ValueError("--masks needs --json OUT.json to store the masks in")
    diff = diff_checkpoints(args.base, args.tuned, atol=args.atol, rtol=args.rtol,
                            intersect=args.intersect, keep_masks=args.masks)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(diff.summary_by("type").to_string(float_format=lambda v: f"{v:.4g}"))
    o = diff.overall
    dtypes = sorted({t["dtype"] for t in diff.tensors})
    print(f"overall sparsity {o['sparsity']:.6f} ({o['changed']} of {o['numel']} entries changed, "
          f"|delta| > atol={args.atol:g}, dtype {','.join(dtypes)})")
    if diff.overall_rtol is not None:
        r = diff.overall_rtol
        print(f"overall sparsity {r['sparsity']:.6f} at rtol={args.rtol:g} ({r['changed']} changed)")
    if diff.skipped:
        print(f"skipped {len(diff.skipped)} tensors not in both: {diff.skipped[:5]}")
    if args.out:
        diff.to_json(args.out)
        print(f"wrote {args.out}")
    return 0


def _sparsity_overlap(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.sparsity import SparsityDiff, overlap

    res = overlap(SparsityDiff.load(args.a), SparsityDiff.load(args.b))
    frame = pd.DataFrame(res["tensors"]).set_index("name")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(float_format=lambda v: f"{v:.4g}"))
    o = res["overall"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"overall o1 {f(o['o1'])} (chance {f(o['o1_chance'])}), o2 {f(o['o2'])} "
          f"(chance {f(o['o2_chance'])}), jaccard {f(o['jaccard'])} (chance {f(o['jaccard_chance'])})")
    return 0


# ---------------------------------------------------------------------------- data selection
def _add_angles(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("angles", help="angle-concentration scores of prompts (GAIN-RL)")
    asub = p.add_subparsers(dest="angles_cmd", required=True, metavar="{score}")
    s = asub.add_parser("score", help="score every record of a JSONL file; writes SCORES.jsonl")
    s.add_argument("--model", required=True, help="preset name (e.g. tiny) or a saved model dir")
    s.add_argument("--data", required=True, help="input JSONL, one JSON object per line")
    s.add_argument("--prompt-field", required=True, help="field holding the prompt (question)")
    s.add_argument("--template-field", default=None,
                   help="field holding template/system text, placed before the prompt")
    s.add_argument("--tokenizer", default="byte", help="tokenizer (default byte)")
    s.add_argument("--batch-size", type=int, default=8, help="records per forward pass")
    s.add_argument("--max-tokens", type=int, default=None,
                   help="truncate each prompt so template + prompt fit in this many tokens")
    s.add_argument("--inter-weight", type=float, default=8.0, help="w in intra + w*inter")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--out", required=True, help="output JSONL: index, intra, inter, score")
    s.set_defaults(func=_angles_score)


def _read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({exc.msg}); write one JSON "
                                 "object per line") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno} is not a JSON object; write one object per line")
            records.append(rec)
    if not records:
        raise ValueError(f"{path} has no records; write one JSON object per line")
    return records


def _field(rec: dict, name: str, where: str) -> str:
    if name not in rec:
        raise ValueError(f"record {where} has no field {name!r} (fields: {sorted(rec)[:8]}); "
                         "pass the right --prompt-field/--template-field")
    return str(rec[name])


def _angles_score(args: argparse.Namespace) -> int:
    import math

    import torch

    from workbench.data import angle_concentration, get_tokenizer
    from workbench.files import atomic_write_text
    from workbench.models import build_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    records = _read_jsonl(args.data)
    tok = get_tokenizer(args.tokenizer)
    model = build_model(args.model, vocab_size=tok.vocab_size).to(args.device)
    limit = args.max_tokens or getattr(model.config, "max_position_embeddings", None)
    segs = []
    for i, rec in enumerate(records):
        tmpl = tok.encode(_field(rec, args.template_field, str(i))) if args.template_field else []
        prompt = tok.encode(_field(rec, args.prompt_field, str(i)))
        if limit is not None:
            if len(tmpl) >= limit:
                raise ValueError(f"record {i}: the template alone has {len(tmpl)} tokens, not "
                                 f"under the limit {limit}; raise --max-tokens or shorten it")
            prompt = prompt[:limit - len(tmpl)]
        segs.append((list(tmpl), list(prompt)))

    def num(v):
        v = float(v)
        return v if math.isfinite(v) else None

    lines = []
    for s in range(0, len(segs), args.batch_size):
        part = segs[s:s + args.batch_size]
        width = max(2, max(len(t) + len(p) for t, p in part))
        ids = torch.zeros(len(part), width, dtype=torch.long)
        attn = torch.zeros(len(part), width, dtype=torch.bool)
        tmask = torch.zeros_like(attn)
        pmask = torch.zeros_like(attn)
        for b, (t, p) in enumerate(part):  # right padding
            n = len(t) + len(p)
            if n:
                ids[b, :n] = torch.tensor(t + p)
            attn[b, :n] = True
            tmask[b, :len(t)] = True
            pmask[b, len(t):n] = True
        out = angle_concentration(model, ids, attention_mask=attn, prompt_mask=pmask,
                                  template_mask=tmask if args.template_field else None,
                                  inter_weight=args.inter_weight)
        for b in range(len(part)):
            lines.append(json.dumps({"index": s + b, "intra": num(out["intra"][b]),
                                     "inter": num(out["inter"][b]),
                                     "score": num(out["score"][b])}))
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    missing = sum(1 for line in lines if json.loads(line)["score"] is None)
    print(f"wrote {len(lines)} scores to {args.out}"
          + (f" ({missing} without a score: too few prompt or template tokens)" if missing else ""))
    return 0


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="indices of the top fraction of SCORES.jsonl by score")
    p.add_argument("--scores", required=True, help="JSONL with index and score per line")
    p.add_argument("--top", type=float, required=True, help="fraction to keep, in (0, 1]")
    p.add_argument("--field", default="score", help="field to rank by (default score)")
    p.add_argument("--out", required=True, help="output JSON list of indices, best first")
    p.set_defaults(func=_select)


def _select(args: argparse.Namespace) -> int:
    from workbench.data import select_top
    from workbench.files import atomic_write_text

    rows = _read_jsonl(args.scores)
    kept = []
    for i, r in enumerate(rows):
        if "index" not in r or args.field not in r:
            raise ValueError(f"{args.scores} line {i + 1} has no 'index' or {args.field!r}; pass a "
                             "file written by 'workbench angles score' or set --field")
        if r[args.field] is not None:
            kept.append(r)
    if not kept:
        raise ValueError(f"no record of {args.scores} has a {args.field!r}; nothing to select")
    top = select_top([float(r[args.field]) for r in kept], args.top)
    chosen = [kept[int(j)]["index"] for j in top]
    atomic_write_text(args.out, json.dumps(chosen) + "\n")
    skipped = len(rows) - len(kept)
    print(f"selected {len(chosen)} of {len(rows)} records -> {args.out}"
          + (f" ({skipped} without a {args.field} skipped)" if skipped else ""))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the classroom dashboard: schedule, training, data selection, sparsity",
                       description="Serve the dashboard (a panel app). It prints the address to open, with "
                                   "its token (like JupyterLab); everything students save goes under "
                                   "--run-dir. Websocket origins are always checked.")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    p.add_argument("--run-dir", default="workbench-runs",
                   help="workspace directory for schedules, runs, fits, selections and diffs")
    p.add_argument("--address", default="localhost",
                   help="interface to listen on (default localhost; 0.0.0.0 to let a classroom network in)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None, help="the token students need (default: a random one, printed)")
    tok.add_argument("--no-token", action="store_true",
                     help="no token: anyone who reaches the address may use it (a trusted lab only)")
    adm = p.add_mutually_exclusive_group()
    adm.add_argument("--admin", action="store_true",
                     help="also print a teacher address (random admin token) whose holder may stop any run")
    adm.add_argument("--admin-token", default=None, help="the teacher's admin token (implies --admin)")
    p.add_argument("--allow-origin", action="append", default=None, metavar="HOST:PORT",
                   help="extra websocket origin to accept (repeatable, exact host; no wildcards), "
                        "e.g. my-laptop.local:5006")
    p.add_argument("--max-runs", type=int, default=None,
                   help="training runs at once; more wait in a queue (default: the number of cores)")
    p.add_argument("--data-dir", action="append", default=None, metavar="DIR",
                   help="a folder whose checkpoints the Sparsity tab may read (repeatable); besides it "
                        "only the workspace's runs and the bundled model are readable")
    p.add_argument("--no-resume", action="store_true",
                   help="do not continue runs a crash or restart interrupted (default: resume them)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from workbench.widgets.dashboard import serve

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_runs is not None and args.max_runs < 1:
        raise ValueError(f"--max-runs must be at least 1, got {args.max_runs}")
    token = None if args.no_token else (args.token if args.token is not None else True)
    admin = args.admin_token if args.admin_token is not None else (True if args.admin else None)
    serve(port=args.port, run_dir=args.run_dir, address=args.address, token=token, admin_token=admin,
          allow_origin=args.allow_origin or (), max_runs=args.max_runs, data_dirs=args.data_dir or (),
          resume_runs=not args.no_resume)
    return 0


# ---------------------------------------------------------------------------- continual
def _add_continual(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "continual", help="continual pre-training grids: run a named comparison, print its metric table",
        description="Continual pre-training (stdlib -> docs, ...): run a named grid of schedules x replay "
                    "fractions x seeds into a results directory (resumable: finished runs are skipped, an "
                    "interrupted one resumes from its checkpoint) and print the metric table "
                    "(mean and std over seeds).")
    p.add_argument("--list", action="store_true", help="list the named grids and their runs")
    p.set_defaults(func=_continual_list)
    csub = p.add_subparsers(dest="continual_cmd", metavar="{run,table}")
    r = csub.add_parser("run", help="run (or resume) a named grid into --out")
    r.add_argument("grid", help="grid name (see `workbench continual --list`)")
    r.add_argument("--out", required=True, help="results directory (one sub-directory per run and seed)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    r.add_argument("--quick", action="store_true", help="tiny steps and data (a smoke test, not a result)")
    r.add_argument("--steps", type=int, default=None,
                   help="steps per phase (default 200, or 10 with --quick; a multiple of the eval interval)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_continual_run)
    t = csub.add_parser("table", help="print the metric table of a results directory")
    t.add_argument("out", help="results directory written by `workbench continual run`")
    t.add_argument("--per-seed", action="store_true", help="one row per run and seed instead of mean/std")
    t.add_argument("--csv", help="also write the per-seed table to this CSV file")
    t.set_defaults(func=_continual_table)


def _continual_list(args: argparse.Namespace) -> int:
    from workbench import continual

    if not args.list:
        print("usage: workbench continual {run,table} ... (or --list); see workbench continual --help",
              file=sys.stderr)
        return 2
    for name in continual.GRIDS:
        runs = continual.grid_runs(name)
        print(f"{name}: " + ", ".join(r.name for r in runs))
    return 0


def _print_table(table, per_seed: bool) -> None:
    import pandas as pd

    from workbench import continual

    if len(table) == 0:
        print("no finished runs yet")
        return
    with pd.option_context("display.max_columns", None, "display.width", 250):
        if per_seed:
            print(table.to_string(index=False, float_format="{:.4f}".format))
            return
        agg = continual.aggregate_table(table)
        flat = pd.DataFrame(index=agg.index)
        for c in [c for c in dict.fromkeys(c[0] for c in agg.columns) if c != "seed"]:
            mean, std = agg[(c, "mean")], agg[(c, "std")]
            flat[c] = [("" if pd.isna(m) else f"{m:.4f}" + ("" if pd.isna(s) else f"±{s:.4f}"))
                       for m, s in zip(mean, std)]
        flat["seeds"] = agg[("seed", "count")].astype(int)
        print(flat.to_string())


def _continual_run(args: argparse.Namespace) -> int:
    from workbench import continual

    table = continual.run_grid(args.grid, args.out, seeds=args.seeds, quick=args.quick, steps=args.steps,
                               progress=not args.no_progress)
    _print_table(table, per_seed=False)
    return 0


def _continual_table(args: argparse.Namespace) -> int:
    from workbench import continual
    from workbench.files import atomic_write_text

    table = continual.metric_table(args.out)
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False))
    _print_table(table, per_seed=args.per_seed)
    return 0


# ---------------------------------------------------------------------------- optim
def _add_optim(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optim", help="optimizer memory tables and side-by-side training comparisons",
                       description="Memory-efficient optimizers (workbench.optim): estimate optimizer-state "
                                   "memory for a model or a LLaMA shape, or train the same model with several "
                                   "optimizers and tabulate final loss, step time and state bytes.")
    osub = p.add_subparsers(dest="optim_cmd", required=True, metavar="{memory,compare}")
    m = osub.add_parser("memory", help="estimated optimizer-state memory, paper-style (no model is allocated "
                                       "for --llama)")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--llama", default=None, metavar="SIZE",
                     help="LLaMA shapes: 60m, 130m, 350m, 1b or 7b (default 7b)")
    src.add_argument("--model", default=None, metavar="PRESET", help="a workbench model preset, e.g. tiny")
    m.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the optimizer state (default float32)")
    m.add_argument("--rank", type=int, default=None,
                   help="rank of the APOLLO and GaLore rows (default: the papers' 7B ranks, 256 and 1024; for a "
                        "small model use about a quarter of its width, e.g. --rank 32 for tiny)")
    m.add_argument("--json", default=None, metavar="OUT", help="also write the table to OUT as JSON")
    m.set_defaults(func=_optim_memory)
    c = osub.add_parser(
        "compare", help="train the same model with each optimizer and print a table",
        description="Train one fresh copy of the model per optimizer (same initialisation, data order and "
                    "schedule shape; each its own peak LR) and print final train/val loss, step time and "
                    "optimizer-state bytes. OPTIMIZER is NAME[:KEY=VALUE,...], e.g. adamw:lr=3e-3 "
                    "apollo:lr=1e-2,rank=32 apollo-mini:lr=1e-2; values are read as JSON when they parse "
                    "(1e-2, 32, true, null), else as text.")
    c.add_argument("optimizers", nargs="+", metavar="OPTIMIZER")
    c.add_argument("--model", default="tiny")
    c.add_argument("--data", default="stdlib", help="a built-in corpus name (default stdlib)")
    c.add_argument("--steps", type=int, default=150)
    c.add_argument("--schedule", default="cosine")
    c.add_argument("--warmup-steps", type=int, default=None, help="default: a tenth of the steps, at most 10")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--seq-len", type=int, default=64)
    c.add_argument("--max-tokens", type=int, default=300_000, help="tokens of the corpus to load (0: all)")
    c.add_argument("--eval-interval", type=int, default=0, help="steps between validation losses (0: the end)")
    c.add_argument("--target-val-loss", type=float, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.add_argument("--csv", default=None, metavar="OUT", help="also write the table to OUT")
    c.add_argument("--history", default=None, metavar="OUT.jsonl",
                   help="also write every run's per-step events, one JSON line each with its 'optimizer' label")
    c.set_defaults(func=_optim_compare)


def _optimizer_arg(text: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` -> (name, kwargs); values parsed as JSON when they parse."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"optimizer {text!r} has no name; write NAME[:KEY=VALUE,...], e.g. apollo:lr=1e-2,rank=32")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"optimizer {text!r}: {item!r} is not KEY=VALUE (e.g. lr=1e-2)")
        key = key.strip().replace("-", "_")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


def _optim_memory(args: argparse.Namespace) -> int:
    import torch

    from workbench.files import atomic_write_text
    from workbench.optim import llama_shapes, memory_table
    from workbench.optim.memory import DEFAULT_TABLE_SPECS

    if args.model:
        from workbench.models import build_model

        what, source = f"model preset {args.model!r}", build_model(args.model)
    else:
        size = args.llama or "7b"
        what, source = f"LLaMA-{size} shapes", llama_shapes(size)
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {args.rank}")

    def with_rank(label: str, spec):          # the APOLLO and GaLore rows at --rank
        if args.rank is None or not (isinstance(spec, dict) and "rank" in spec):
            return label, spec
        return label.replace(f"r={spec['rank']}", f"r={args.rank}"), {**spec, "rank": args.rank}

    specs = dict(with_rank(label, spec) for label, spec in DEFAULT_TABLE_SPECS.items())
    table = memory_table(source, specs, dtype=getattr(torch, args.dtype))
    print(f"optimizer state for {what}, {args.dtype} state")
    print(table.to_string())
    if args.json:
        atomic_write_text(args.json, table.to_json(orient="index", indent=1))
    return 0


def _optim_compare(args: argparse.Namespace) -> int:
    from workbench.files import atomic_write_text
    from workbench.optim import compare_optimizers

    specs = {}
    for text in args.optimizers:
        if text in specs:
            raise ValueError(f"optimizer {text!r} is given twice")
        specs[text] = _optimizer_arg(text)
    warmup = min(10, args.steps // 10) if args.warmup_steps is None else args.warmup_steps
    table = compare_optimizers(specs, model=args.model, data=args.data, steps=args.steps, schedule=args.schedule,
                               warmup_steps=warmup, batch_size=args.batch_size, seq_len=args.seq_len,
                               max_tokens=args.max_tokens or None, eval_interval=args.eval_interval,
                               target_val_loss=args.target_val_loss, seed=args.seed, device=args.device,
                               progress=True)
    cols = ["optimizer", "lr", "final_train_loss", "final_val_loss", "step_time_ms", "state_bytes",
            "state_bytes_per_param"] + (["step_to_target"] if args.target_val_loss is not None else [])
    print(table[cols].to_string(float_format="{:.4g}".format))
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index_label="label"))
    if args.history:
        lines = [json.dumps({"optimizer": label, **event}) for label, events in table.attrs["history"].items()
                 for event in events]
        atomic_write_text(args.history, "\n".join(lines) + "\n")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare corpora bigger than memory as memory-mapped token shards")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{prepare,info}")
    pr = dsub.add_parser("prepare", help="tokenise a local corpus once into token shards (train with --data OUT)")
    pr.add_argument("data", metavar="PATH_OR_DATASET",
                    help="a .txt/.json/.jsonl/.csv/.parquet file or folder of them, a folder saved with "
                         "datasets' save_to_disk, or a built-in corpus name (stdlib, docs)")
    pr.add_argument("--out", required=True, help="the folder to create")
    pr.add_argument("--tokenizer", default="byte", help="byte, bpe or a tokenizer.json path [byte]")
    pr.add_argument("--text-column", default="text", help="column holding the text in json/csv/parquet [text]")
    pr.add_argument("--num-proc", type=int, default=None, help="tokenising processes [one per core]")
    pr.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file [268435456]")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    pr.set_defaults(func=_data_prepare)
    info = dsub.add_parser("info", help="what a prepared folder holds")
    info.add_argument("dir", metavar="DIR")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=_data_info)


def _data_prepare(args: argparse.Namespace) -> int:
    from workbench.data.shards import prepare_shards

    m = prepare_shards(args.data, args.out, tokenizer=args.tokenizer, num_proc=args.num_proc,
                       text_column=args.text_column, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
                       progress=not args.no_progress)
    _print_manifest(args.out, m)
    print(f"train on it with: workbench train --data {args.out}"
          + ("" if m["tokenizer"] == "byte" else f" --tokenizer {args.out}/{m.get('tokenizer_file', '?')}"))
    return 0


def _print_manifest(path: str, m: dict) -> None:
    print(f"{path}: tokenizer {m['tokenizer']} (vocab {m['vocab_size']:,}, {m['dtype']}), source {m['source']}")
    for split, s in m["splits"].items():
        size = s["tokens"] * (1 if m["dtype"] == "uint8" else 2 if m["dtype"] == "uint16" else 4)
        print(f"  {split:5s} {s['tokens']:>15,} tokens  {s['documents']:>12,} documents  "
              f"{len(s['shards'])} shard(s), {size / 2**20:,.1f} MiB")


def _data_info(args: argparse.Namespace) -> int:
    from workbench.data.shards import read_manifest

    m = read_manifest(args.dir)
    if args.json:
        print(json.dumps(m, indent=1))
    else:
        _print_manifest(args.dir, m)
    return 0


COMMANDS = [_add_schedule, _add_train, _add_runs, _add_assets, _add_curves, _add_sparsity,
            _add_angles, _add_select, _add_serve, _add_continual, _add_optim, _add_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Research workbench for how LLMs train: schedules, training runs, loss laws.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message of a known error, on one line (an OSError names its file)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        what = {IsADirectoryError: "is a directory; give a file path",
                NotADirectoryError: "a part of this path is not a directory",
                PermissionError: "permission denied; choose a path you can write/read",
                FileNotFoundError: "does not exist"}.get(type(exc), exc.strerror)
        return f"{exc.filename}: {what}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


def _known_errors() -> tuple:
    from workbench.runlock import RunLocked

    return (ValueError, OSError, RunLocked, OverflowError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    """Run a command; known errors (bad input, a busy run dir, a bad file) print one line and return 2.

    Anything else is a bug: one line saying so (``WORKBENCH_TRACEBACK=1`` shows the traceback), exit 1.
    Ctrl-C outside a training run returns 130 without a traceback.
    """
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("WORKBENCH_TRACEBACK"):
            raise
        if isinstance(exc, _known_errors()):
            print(f"workbench {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"workbench {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug; "
              "please report it - WORKBENCH_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


def _exit_after_distributed(code: int) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1), leave without running C++ destructors: gloo's worker threads can
    abort the process at interpreter teardown ("terminate called without an active exception", SIGABRT)
    after everything was written. The run's files are closed and fsynced by then; flush stdio and go."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    _code = main()
    _exit_after_distributed(_code)
    sys.exit(_code)
