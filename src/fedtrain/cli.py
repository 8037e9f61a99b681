"""Command line.

``fedtrain demo --out DIR``: the embedded demo; ``fedtrain train ...``: a run from
flags; ``fedtrain run CONFIG.toml``: a run from a TOML run file (``fedtrain config
--example`` writes a commented template); ``fedtrain resume RUN_DIR``: continue a run
from its checkpoint; ``fedtrain report RUN_DIR [RUN_DIR ...]``: re-render plots and
compare runs side by side. ``--quiet`` prints nothing but errors; ``--log-json``
prints one JSON object per line (``round``, ``summary``, ``error`` events).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import privagg

__all__ = ["build_parser", "main"]


def _threads() -> None:
    import torch

    n = int(os.environ.get("FEDTRAIN_THREADS", "0"))
    if n <= 0:
        # Oversubscribed OpenMP threads spin and can run several times slower than
        # one thread, so leave the cores that other processes are busy on.
        cores = min(8, os.cpu_count() or 1)
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
        n = max(1, cores - busy)
    torch.set_num_threads(n)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, help="run folder (report, adapter, checkpoint)"
    )
    p.add_argument(
        "--backend",
        default=None,
        help="privagg backend (default: ckks; 'plain' only when named explicitly)",
    )
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--clients", type=int, default=None)
    p.add_argument("--local-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="LoRA learning rate")
    p.add_argument(
        "--head-lr", type=float, default=None, help="task-head learning rate"
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=None)
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument(
        "--max-train", type=int, default=None, help="training examples in total"
    )
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument(
        "--mode", choices=["ffa", "fedit", "flora", "alternating"], default=None
    )
    p.add_argument(
        "--pooling",
        choices=["auto", "cls", "pooler", "mean"],
        default=None,
        help="seq_cls: how the head reads the encoder (auto: the model's "
        "sentence-transformers pooling, else its native head)",
    )
    p.add_argument(
        "--head-steps",
        type=int,
        default=None,
        help="seq_cls: per round, the first N local steps train the head alone on "
        "cached pooled features (LP-FT)",
    )
    p.add_argument("--privacy", choices=["none", "record", "client"], default=None)
    p.add_argument("--noise-multiplier", type=float, default=None)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument(
        "--head-clip",
        type=float,
        default=None,
        help="record-level DP: clip the head's per-example gradient separately",
    )
    p.add_argument("--delta", type=float, default=None)
    p.add_argument(
        "--target-epsilon",
        type=float,
        default=None,
        help="privacy budget; the run stops before exceeding it. Without "
        "--noise-multiplier the multiplier is calibrated to it for the planned "
        "rounds, steps and sampling",
    )
    p.add_argument(
        "--min-clients",
        type=int,
        default=None,
        help="client-level DP: guaranteed minimum of contributors the noise is sized "
        "for (fewer: the round is refused)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="base-model dropout (default: 0 under DP, the model's own otherwise)",
    )
    p.add_argument(
        "--privacy-unit",
        default=None,
        help="name a NEW privacy unit (new data): its own ledgers. By default runs "
        "in the same folder keep counting into the same ledgers, also with --no-resume",
    )
    p.add_argument(
        "--report-per-client",
        action="store_true",
        help="DEBUG: add per-client losses, label counts and identities to "
        "report.json (not covered by the DP guarantee)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (the checkpoint is archived; privacy ledgers are kept)",
    )
    _output(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)


_OUTPUT_FLAGS = ("--no-progress", "--quiet", "--log-json", "--no-resume")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (exit status)"
    )
    g.add_argument(
        "--log-json",
        action="store_true",
        help="one JSON object per line on stdout: round, summary and error events",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    ap = argparse.ArgumentParser(
        prog="fedtrain",
        description="Federated LoRA fine-tuning on privagg",
        allow_abbrev=False,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser(
        "demo",
        help="the embedded default: RT sentiment, MiniLM-L6, 4 clients, CKKS, DP-SGD",
        allow_abbrev=False,
    )
    _common(d)
    d.add_argument(
        "--quick", action="store_true", help="a tiny configuration (tests, smoke runs)"
    )
    t = sub.add_parser("train", help="a configurable run", allow_abbrev=False)
    _common(t)
    t.add_argument(
        "--task", choices=["seq_cls", "token_cls", "causal_lm"], required=True
    )
    t.add_argument(
        "--data",
        required=True,
        help="rt | conll | hf:NAME[:SPLIT] | file (.csv/.jsonl/CoNLL)",
    )
    t.add_argument("--eval-data", default=None)
    t.add_argument(
        "--model", default=None, help="minilm | smollm2 | HF name | path | .gguf"
    )
    t.add_argument(
        "--partition", choices=["iid", "dirichlet", "key"], default="dirichlet"
    )
    t.add_argument("--alpha", type=float, default=0.5)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--target-modules", default=None, help="comma-separated")
    t.add_argument(
        "--server-opt", choices=["fedavg", "fedadam", "fedyogi"], default="fedavg"
    )
    t.add_argument("--server-lr", type=float, default=None)
    t.add_argument("--sampling", choices=["poisson", "fraction"], default="fraction")
    t.add_argument("--sample-rate", type=float, default=1.0)
    t.add_argument("--local-epochs", type=float, default=None)
    r = sub.add_parser(
        "run",
        help="a run from a TOML run file (see `config --example`)",
        allow_abbrev=False,
    )
    r.add_argument("config", help="the run file (TOML)")
    r.add_argument("--out", default=None, help="run folder (overrides the file's out)")
    r.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (the checkpoint is archived; privacy ledgers are kept)",
    )
    r.add_argument(
        "--report-per-client",
        action="store_true",
        help="DEBUG: per-client data in report.json (not covered by DP)",
    )
    _output(r)
    c = sub.add_parser("config", help="run-file helpers", allow_abbrev=False)
    c.add_argument(
        "--example",
        action="store_true",
        required=True,
        help="print a commented run-file template",
    )
    c.add_argument("--out", default=None, help="write it to this file instead")
    c.add_argument("--force", action="store_true", help="overwrite --out")
    rs = sub.add_parser(
        "resume",
        help="continue a run from its checkpoint, with the command that started it",
        allow_abbrev=False,
    )
    rs.add_argument("run_dir", help="the run folder")
    _output(rs)
    rp = sub.add_parser(
        "report",
        help="re-render plots of runs and compare them side by side",
        allow_abbrev=False,
    )
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument(
        "--out", default=None, help="write compare.png and compare.json here"
    )
    rp.add_argument("--json", action="store_true", help="print the table as JSON")
    return ap


T = TypeVar("T")


def _privacy_extra(args: argparse.Namespace) -> dict[str, Any]:
    """Budget, calibration, minimum contributors and privacy unit from the flags."""
    out: dict[str, Any] = {
        "target_epsilon": args.target_epsilon,
        # a target without an explicit multiplier: calibrate z to it
        "calibrate": args.target_epsilon is not None and args.noise_multiplier is None,
        "min_clients": args.min_clients,
    }
    if args.privacy_unit is not None:
        out["unit"] = args.privacy_unit
    return out


def _pick(v: T | None, default: T) -> T:
    return default if v is None else v


COMMAND_FILE = "command.json"
"""In a run folder: the command line that started the run (for ``fedtrain resume``)."""


class _Console:
    """Where the CLI's own lines go: human text, nothing (--quiet) or JSON lines."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO) -> None:
        self.mode = (
            "json"
            if getattr(args, "log_json", False)
            else "quiet"
            if getattr(args, "quiet", False)
            else "human"
        )
        self.stdout = stdout

    @property
    def progress_bars(self) -> bool:
        return self.mode == "human"

    def event(self, kind: str, fields: dict[str, Any], human: str | None) -> None:
        if self.mode == "json":
            line = json.dumps({"event": kind, **fields}, allow_nan=False, default=str)
            print(line, file=self.stdout, flush=True)
        elif self.mode == "human" and human is not None:
            print(human, file=self.stdout, flush=True)

    def error(self, message: str, status: int) -> int:
        print(f"fedtrain: {message}", file=sys.stderr, flush=True)
        if self.mode == "json":
            self.event("error", {"message": message, "exit_status": status}, None)
        return status

    @contextlib.contextmanager
    def library_output(self) -> Iterator[None]:
        """Outside the human mode, the library's own console lines are dropped."""
        if self.mode == "human":
            yield
            return
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield


def _round_event(rec: Any) -> dict[str, Any]:
    """A round's figures for ``--log-json``: counts only, no client identities."""
    from fedtrain.report import _finite

    return {
        "round": rec.round,
        "metrics": _finite(dict(rec.metrics)),
        "epsilon": _finite(rec.epsilon),
        "num_contributors": len(rec.contributors),
        "num_failed": len(rec.failed),
        "released": rec.skipped is None,
    }


def _saved_argv(argv: Sequence[str], out: Path) -> list[str]:
    """``argv`` without output/resume flags and with ``--out`` made absolute."""
    kept: list[str] = []
    it = iter(argv)
    for a in it:
        if a in _OUTPUT_FLAGS:
            continue
        if a == "--out":
            next(it, None)
            continue
        if a.startswith("--out="):
            continue
        kept.append(a)
    return [*kept, "--out", str(out.resolve())]


def _write_command(out: Path, argv: list[str], *, replace: bool) -> None:
    from fedtrain.privacy import atomic_write_bytes

    path = out / COMMAND_FILE
    if path.exists() and not replace:
        return
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": "fedtrain-command/1", "argv": argv, "cwd": os.getcwd()}
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())


def _read_command(run_dir: Path) -> tuple[list[str], str | None]:
    from fedtrain.errors import ConfigError

    path = run_dir / COMMAND_FILE
    try:
        raw = path.read_bytes()[: 1 << 20]
        doc = json.loads(raw)
    except FileNotFoundError:
        raise ConfigError(
            f"{str(run_dir)!r} has no {COMMAND_FILE}: not a fedtrain run folder (or "
            "one written before `fedtrain resume` existed: run its command again, "
            "it resumes by default)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from exc
    argv = doc.get("argv") if isinstance(doc, dict) else None
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) for a in argv)
        or argv[0] not in ("demo", "train", "run")
        or doc.get("format") != "fedtrain-command/1"
    ):
        raise ConfigError(f"{str(path)!r} is not a fedtrain command file")
    cwd = doc.get("cwd")
    return argv, cwd if isinstance(cwd, str) else None


def _single_value_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option taking exactly one value, in ``parser`` and its subcommands."""
    found: list[argparse.Action] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _single_value_options(sub)
        elif (
            isinstance(action, argparse._StoreAction)
            and action.option_strings
            and action.nargs is None
        ):
            found.append(action)
    return found


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``parse_args``, plus the check argparse skips for ``--opt=--``.

    Python's argparse reads ``--batch-size=--`` as an empty list without calling the
    option's type, so a single-value option can arrive as ``[]`` (found by the CLI
    fuzzer, issue #13): that is a usage error (exit 2), like any other bad value.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in _single_value_options(parser):
        if isinstance(getattr(args, action.dest, None), list):
            parser.error(
                f"argument {'/'.join(action.option_strings)}: expected one value"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedtrain`` and ``python -m fedtrain``.

    Returns:
        The exit status: 0 done; 2 invalid input or a failed run; 3 the privacy
        budget was exhausted (the run stopped before exceeding it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    if args.cmd == "config":
        return _cmd_config(args)
    if args.cmd == "report":
        return _cmd_report(args)
    if args.cmd == "resume":
        return _cmd_resume(args)
    return _cmd_run(args, argv)


def _cmd_config(args: argparse.Namespace) -> int:
    from fedtrain.runfile import example_toml

    text = example_toml()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    try:
        if out.exists() and not args.force:
            print(f"fedtrain: {str(out)!r} exists (use --force)", file=sys.stderr)
            return 2
        out.write_text(text)
    except OSError as exc:  # a directory, a missing parent, no permission (issue #13)
        print(
            f"fedtrain: cannot write {str(out)!r}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {out}: edit it, then `fedtrain run {out}`")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from fedtrain.errors import FedtrainError

    console = _Console(args, sys.stdout)
    run_dir = Path(args.run_dir)
    try:
        saved, cwd = _read_command(run_dir)
    except FedtrainError as exc:
        return console.error(f"error: {exc}", 2)
    new_argv = _saved_argv(saved, run_dir)
    new_argv += [
        f
        for f, on in (
            ("--no-progress", args.no_progress),
            ("--quiet", args.quiet),
            ("--log-json", args.log_json),
        )
        if on
    ]
    try:
        new_args = _parse_args(new_argv)
    except SystemExit:
        return console.error(f"error: {COMMAND_FILE} in {str(run_dir)!r} is invalid", 2)
    here = os.getcwd()
    # relative data paths in the saved command are relative to where it was run
    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return _cmd_run(new_args, new_argv)
    finally:
        os.chdir(here)


def _cmd_report(args: argparse.Namespace) -> int:
    from fedtrain.errors import FedtrainError
    from fedtrain.report import (
        compare_rows,
        format_table,
        load_report,
        plot_compare,
        plot_rounds,
        write_report,
    )

    try:
        reports = [load_report(Path(d) / "report.json") for d in args.run_dirs]
        names = [Path(d).resolve().name for d in args.run_dirs]
        for d, rep in zip(args.run_dirs, reports, strict=True):
            plot_rounds(rep, d)
        rows = compare_rows(reports, names)
        if args.out is not None:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            plot_compare(reports, names, out)
            write_report(out / "compare.json", {"runs": rows})
    except FedtrainError as exc:
        print(f"fedtrain: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out not writable, a name too long (issue #13)
        print(f"fedtrain: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1, allow_nan=False))
    else:
        print(format_table(rows))
    return 0


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``demo``, ``train`` and ``run``: build the configuration and run it."""
    console = _Console(args, sys.stdout)
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    _threads()
    from fedtrain.errors import FedtrainError

    t0 = time.perf_counter()
    try:
        cfg, train, ev, spec, out, after = _setup(args, argv)
        with console.library_output():
            report = _run_experiment(
                cfg,
                train,
                ev,
                spec,
                out,
                progress=console.progress_bars and not args.no_progress,
                resume=not args.no_resume,
                on_round=lambda rec: console.event("round", _round_event(rec), None),
                report_per_client=args.report_per_client,
            )
        after()
    except FedtrainError as exc:
        return console.error(f"error: {exc}", 2)
    except privagg.BudgetExceededError as exc:
        return console.error(f"privacy budget exhausted: {exc}", 3)
    except privagg.PrivaggError as exc:
        return console.error(f"error: {type(exc).__name__}: {exc}", 2)
    except (OSError, UnicodeError) as exc:  # the run folder cannot be written, or
        # its name is not UTF-8 (found fuzzing the CLI, issue #13)
        return console.error(f"error: {type(exc).__name__}: {exc}", 2)
    from fedtrain.report import summary_line

    summary = {
        "main_metric": report["main_metric"],
        "initial": report["initial_metrics"].get(report["main_metric"]),
        "final": report["final_metrics"].get(report["main_metric"]),
        "epsilon": report["privacy"]["final_epsilon"],
        "backend": report["backend"],
        "seconds": round(time.perf_counter() - t0, 1),
        "out": str(out),
    }
    line = summary_line(report)
    if console.mode == "human":
        print(json.dumps(summary))
        print(line, flush=True)
    else:
        console.event("summary", {**summary, "line": line}, None)
    if report["privacy"].get("stopped"):
        pv = report["privacy"]
        return console.error(
            f"privacy budget exhausted, the run stopped early: "
            f"{pv['stopped']}; epsilon spent {pv['final_epsilon']:.6g} of "
            f"{pv['target_epsilon']:g}, remaining {pv['remaining_epsilon']:.6g}",
            3,
        )
    return 0


def _run_experiment(*a: Any, **kw: Any) -> dict[str, Any]:
    from fedtrain.experiment import run_experiment

    return run_experiment(*a, **kw)


def _setup(args: argparse.Namespace, argv: Sequence[str]) -> tuple[Any, ...]:
    """(config, train, eval, spec, out, after): ``after`` records the command."""
    from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
    from fedtrain.errors import ConfigError
    from fedtrain.experiment import ExperimentSpec, choose_backend, load_task_data

    if args.cmd == "run":
        from fedtrain.runfile import RunFile, load_run_file, to_toml

        rf = load_run_file(args.config)
        out_s = args.out if args.out is not None else rf.out
        if out_s is None:
            raise ConfigError("no run folder: set `out` in the run file or pass --out")
        out = Path(out_s)
        cfg = _replace_backend(rf.config, choose_backend(rf.config.backend))
        train, ev = rf.load_data()
        effective = RunFile(
            config=cfg, data=rf.data, federation=rf.federation, out=str(out.resolve())
        )
        saved = ["run", str((out / "run.toml").resolve()), "--out", str(out.resolve())]
        if args.report_per_client:
            saved.append("--report-per-client")

        def record(replace: bool) -> None:
            from fedtrain.privacy import atomic_write_bytes

            out.mkdir(parents=True, exist_ok=True)
            if replace or not (out / "run.toml").exists():
                atomic_write_bytes(out / "run.toml", to_toml(effective).encode())
            _write_command(out, saved, replace=replace)

        record(args.no_resume)
        return cfg, train, ev, rf.federation, out, lambda: record(True)

    out = Path(args.out)
    saved_argv = _saved_argv(argv, out)
    _write_command(out, saved_argv, replace=args.no_resume)
    if args.cmd == "demo":
        from fedtrain.recipes import sentiment_setup

        cfg, train, ev, spec = sentiment_setup(
            args,
            backend=choose_backend(args.backend or "ckks"),
            privacy_extra=_privacy_extra(args),
        )
    else:
        tm = tuple(args.target_modules.split(",")) if args.target_modules else None
        cfg = RunConfig(
            task=args.task,
            model=_pick(
                args.model, "smollm2" if args.task == "causal_lm" else "minilm"
            ),
            max_len=_pick(args.max_len, 64),
            lora=LoraSettings(
                r=args.rank,
                alpha=2.0 * args.rank,
                mode=cast(Any, _pick(args.mode, "ffa")),
                target_modules=tm,
                pooling=cast(Any, _pick(args.pooling, "auto")),
                head_steps=_pick(args.head_steps, 0),
            ),
            rounds=RoundConfig(
                rounds=_pick(args.rounds, 3),
                sampling=args.sampling,
                sample_rate=args.sample_rate,
                local_steps=None
                if args.local_epochs is not None and args.local_steps is None
                else _pick(args.local_steps, 20),
                local_epochs=args.local_epochs,
                batch_size=_pick(args.batch_size, 16),
                lr=_pick(args.lr, 2e-3),
                head_lr=args.head_lr,
                optimizer=_pick(args.optimizer, "adamw"),
                server_opt=args.server_opt,
                server_lr=_pick(
                    args.server_lr, 1.0 if args.server_opt == "fedavg" else 1e-2
                ),
            ),
            privacy=PrivacyConfig(
                level=cast(Any, _pick(args.privacy, "none")),
                noise_multiplier=_pick(args.noise_multiplier, 1.0),
                clip=_pick(args.clip, 1.0),
                head_clip=args.head_clip,
                delta=_pick(args.delta, 1e-5),
                **_privacy_extra(args),
            ),
            backend=choose_backend(args.backend or "ckks"),
            device=args.device,
            seed=args.seed,
            model_dropout=args.dropout,
        )
        train, ev = load_task_data(
            args.task,
            args.data,
            eval_data=args.eval_data,
            max_train=args.max_train,
            max_eval=args.max_eval,
            seed=args.seed,
        )
        spec = ExperimentSpec(
            num_clients=_pick(args.clients, 4),
            partition=args.partition,
            alpha=args.alpha,
            seed=args.seed,
        )
    return (
        cfg,
        train,
        ev,
        spec,
        out,
        lambda: _write_command(out, saved_argv, replace=True),
    )


def _replace_backend(cfg: Any, backend: str) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, backend=backend)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
