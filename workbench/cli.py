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
    "batch_size": "batch_size", "seq_len": "seq_len", "grad_accum": "grad_accum",
    "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_batches": "eval_batches",
    "checkpoint_interval": "checkpoint_interval", "target_val_loss": "target_val_loss",
    "max_tokens": "max_tokens", "seed": "seed", "device": "device", "compile": "compile",
}
_RESUME_FLAGS = ("steps", "device", "compile")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (or --resume a run) into a run directory",
        description="Train a model with a learning-rate schedule. A run directory holds one run: "
                    "config.json, log.jsonl (one line per step), model.safetensors + state.pt "
                    "(the last checkpoint) and summary.json. Ctrl-C once stops after the current "
                    "step with a checkpoint; --resume DIR continues it.")
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
    p.add_argument("--optimizer", help="adamw, adam or sgd [adamw]")
    p.add_argument("--weight-decay", type=float, help="[0.1 for adamw, else 0]")
    p.add_argument("--batch-size", type=int, help="sequences per rank per micro-step [8]")
    p.add_argument("--seq-len", type=int, help="tokens per sequence [128]")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step [1]")
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off [1.0]")
    p.add_argument("--eval-interval", type=int, help="evaluate every N steps (and at the end) [100]")
    p.add_argument("--eval-batches", type=int, help="validation batches per evaluation [20]")
    p.add_argument("--checkpoint-interval", type=int, help="checkpoint every N steps (and at the end) [500]")
    p.add_argument("--target-val-loss", type=float, help="report the train time until val loss reaches this")
    p.add_argument("--max-tokens", type=int, help="use only the first N tokens of the data")
    p.add_argument("--seed", type=int, help="seed for weights and data order [0]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: abort
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr)
        stop.set()

    previous = None
    if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        summary = trainer.run()
    except tr.TrainingDiverged as exc:
        print(f"workbench train: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if trainer.is_main:
        print(_format_runs([summary]))
        if summary["status"] == "stopped" or summary["steps"] < summary["total_steps"]:
            print(f"continue with: workbench train --resume {config.run_dir}"
                  + (" --steps N" if summary["status"] != "stopped" else ""))
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
    if kind == "int":
        return f"{int(value):,}"
    if kind == "time":
        return f"{value:.1f} s"
    if kind == "rate":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _format_runs(summaries: list[dict]) -> str:
    rows = [
        ("run", lambda s: _fmt(s.get("run_dir"))),
        ("status", lambda s: _fmt(s.get("status"))),
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


COMMANDS = [_add_schedule, _add_train, _add_runs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Research workbench for how LLMs train: schedules, training runs, loss laws.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"workbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
