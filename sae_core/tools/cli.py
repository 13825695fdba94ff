"""The `sae` command line.

    sae validate FILE...              check files against the trajectory standard
    sae recompute INPUT OUTPUT ...    estimators over saved rollouts (a file, a directory, a glob)
    sae inspect FILE                  a summary: lengths, boundaries, segments, advantage statistics
    sae report FILE --out PAGE.html   a self-contained HTML report with plots and a token view

Exit status: 0 when everything went well, 1 when a file is bad or a shard failed, 2 for a usage
error. Bad data is reported as messages naming the file, column and first bad row, never as a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .. import registry


def build_parser() -> argparse.ArgumentParser:
    """The `sae` argument parser. The estimator, rule, option, mask-mode and backend flags and
    choices are read from `sae_core.registry` when this is called: an option added there is a flag
    of `sae recompute` (`--name-with-dashes`, parsed and checked by `Option.parse`)."""
    parser = argparse.ArgumentParser(prog="sae", description="sae-rl: advantage estimators and the trajectory "
                                                             "standard for LLM rollouts")
    sub = parser.add_subparsers(dest="command", required=True)
    estimators = tuple(registry.ESTIMATORS)

    val = sub.add_parser("validate", help="check files against the trajectory standard",
                         description="Check Parquet / Arrow IPC files against the trajectory standard "
                                     "(schemas/SPEC.md): one line per good file, the problems of a bad one.")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.add_argument("--estimator", choices=estimators,
                     help="also check that the columns this estimator reads are present")
    _add_option(val, _rule_option())

    rec = sub.add_parser(
        "recompute", help="compute advantages on saved rollouts",
        description="Stream rollouts (the trajectory standard) through one or more estimators and write them "
                    "with their outputs added. INPUT is a file, a directory (every shard under it) or a "
                    "glob pattern (quote it); OUTPUT a file for a file, else a directory. Outputs are atomic; "
                    "a directory job skips shards whose output is already complete.")
    rec.add_argument("input", metavar="INPUT")
    rec.add_argument("output", metavar="OUTPUT")
    rec.add_argument("--estimator", action="append", metavar="NAME[:k=v,...]",
                     help=f"{', '.join(estimators)}, with optional overrides, e.g. sae:threshold=0.1. Repeat for "
                          "several output sets (advantages_gae, advantages_sae, ...). Default: sae")
    for option in job_options():
        _add_option(rec, option)
    rec.add_argument("--batch-size", type=int, default=1024, help="rows per batch and per row group (default 1024)")
    rec.add_argument("--backend", choices=registry.BACKENDS, default="auto",
                     help="estimator backend (default auto)")
    rec.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process; ray: one Ray Data task per shard")
    rec.add_argument("--ray-address", default=None, help="a Ray cluster to join (default: a local instance)")
    rec.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    rec.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal)")

    ins = sub.add_parser("inspect", help="summarise a file: lengths, boundaries, segments, advantages",
                         description="A summary of a trajectory file: rows, tokens, response lengths, boundary "
                                     "fraction and segment lengths at several thresholds, advantage statistics "
                                     "per estimator, correlations between estimators, NaN counts.")
    ins.add_argument("file", metavar="FILE")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--threshold", type=float, action="append", default=None, metavar="P",
                     help="a probability threshold to count logprob boundaries at (repeatable; default "
                          "0.05, 0.1, 0.2, 0.5, plus those the file's sae sets recorded)")
    ins.add_argument("--batch-size", type=int, default=1024, help="rows read at a time (default 1024)")

    rep = sub.add_parser("report", help="a self-contained HTML report of a file",
                         description="One HTML page that needs no network: plots of segment lengths and advantage "
                                     "distributions per estimator, and a token view of a few responses.")
    rep.add_argument("file", metavar="FILE")
    rep.add_argument("--out", required=True, metavar="PAGE.html")
    rep.add_argument("--tokenizer", default=None, metavar="PATH",
                     help="a local transformers tokenizer to decode token ids with")
    rep.add_argument("--responses", type=int, default=4, help="responses in the token view (default 4)")
    rep.add_argument("--threshold", type=float, action="append", default=None, metavar="P",
                     help="a probability threshold to plot segments at (repeatable)")
    rep.add_argument("--batch-size", type=int, default=1024, help="rows read at a time (default 1024)")

    dem = sub.add_parser("demo", help="the estimator lab end to end in under a minute (./dev main)",
                         description="Synthetic RLVR rollouts with exact advantages, written in the trajectory "
                                     "standard, recomputed with several estimators, scored against the exact "
                                     "advantages, and reported in HTML.")
    dem.add_argument("--out", default="sae-demo", metavar="DIR", help="where the files go (default ./sae-demo)")
    dem.add_argument("--tasks", type=int, default=24, help="synthetic prompts (default 24)")
    dem.add_argument("--samples", type=int, default=8, help="responses per prompt (default 8)")
    dem.add_argument("--seed", type=int, default=0)
    dem.add_argument("--no-report", action="store_true", help="skip the HTML report")

    lab = sub.add_parser("lab", help="the estimator lab's sweep over critics and seeds",
                         description="Score every estimator against exact advantages on synthetic RLVR rollouts, "
                                     "for each critic error model, over seeds (mean and 95%% CI).")
    lab.add_argument("--config", metavar="FILE.json", help="a sweep config (see sae_core.lab.SweepConfig.from_dict)")
    lab.add_argument("--seeds", type=int, default=None, help="override the config's number of seeds")
    lab.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    lab.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal)")

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print(f"sae {args.command}: --batch-size must be at least 1", file=sys.stderr)
        return 2
    from ..trajectory import TrajectoryWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrajectoryWarning)  # one line per file, even if repeated
            return {"validate": _validate, "recompute": _recompute, "inspect": _inspect, "report": _report,
                    "demo": _demo, "lab": _lab}[args.command](args)
    except BrokenPipeError:  # `sae inspect FILE | head`: the reader left, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:  # outside the block: showwarning is Python's own again, not the recorder
        _print_warnings(caught)


def job_options() -> list[registry.Option]:
    """The options `sae recompute` takes job-wide: the common arguments, then every option of some
    estimator (registry order); each run takes those its estimator reads."""
    taken = {name for e in registry.ESTIMATORS.values() for name in e.options}
    return [*registry.COMMON.values(), *(o for name, o in registry.OPTIONS.items() if name in taken)]


def _rule_option() -> registry.Option:
    """The option that names sae's boundary rule (`--boundary`)."""
    return next(o for o in registry.OPTIONS.values() if o.kind == "rule")


def _add_option(parser: argparse.ArgumentParser, option: registry.Option) -> None:
    """`--name-with-dashes` for a registry option: dest `name`, default None (not given), the
    registry's help and default, choices for a rule or choice option, else `Option.parse`."""
    flag = "--" + option.name.replace("_", "-")
    default = "" if option.default is None else f" (default {option.default})"
    help_text = (option.help + default).replace("%", "%%")  # argparse formats help with %
    if option.kind in ("rule", "choice"):
        choices = tuple(registry.RULES) if option.kind == "rule" else option.choices
        parser.add_argument(flag, dest=option.name, choices=choices, default=None, help=help_text)
    else:
        metavar = {"int_list": "ID,ID", "int": "N"}.get(option.kind, "X")
        parser.add_argument(flag, dest=option.name, type=_parser_of(option), default=None, metavar=metavar,
                            help=help_text)


def _parser_of(option: registry.Option):
    """`option.parse` as an argparse type: a bad value is a usage error naming the option."""
    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _print_warnings(caught) -> None:
    from ..trajectory import TrajectoryWarning

    for w in caught:
        if issubclass(w.category, TrajectoryWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:  # not ours: shown as Python would have shown it
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _validate(args) -> int:
    from ..trajectory import TrajectoryError, validate_file

    status = 0
    for path in args.files:
        try:
            boundary = getattr(args, _rule_option().name)
            summary = validate_file(path, estimator=args.estimator, boundary=boundary)
        except TrajectoryError as exc:
            status = 1
            for problem in exc.problems:
                print(f"{path}: {problem}", file=sys.stderr)
            continue
        print(summary.line())
    return status


def _recompute(args) -> int:
    from .recompute import plan_runs, recompute

    common = {o.name: getattr(args, o.name, None) for o in job_options()}
    try:
        runs = plan_runs(args.estimator or ["sae"], common)
        result = recompute(args.input, args.output, runs, engine=args.engine, batch_size=args.batch_size,
                           backend=args.backend, overwrite=args.overwrite, progress=args.progress,
                           ray_address=args.ray_address)
    except ValueError as exc:
        print(f"sae recompute: {exc}", file=sys.stderr)
        return 2
    for f in result.files:
        print(f.line(), file=sys.stdout if f.status != "failed" else sys.stderr)
    print(result.summary())
    return 0 if result.ok else 1


def _inspect(args) -> int:
    from ..trajectory import TrajectoryError
    from .summary import inspect_file

    try:
        kwargs = {"thresholds": tuple(args.threshold)} if args.threshold else {}
        inspection = inspect_file(args.file, batch_size=args.batch_size, **kwargs)
    except TrajectoryError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a threshold or batch size out of range
        print(f"sae inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(inspection.to_dict(), indent=2) if args.json else inspection.format())
    return 0


def _report(args) -> int:
    from ..trajectory import TrajectoryError
    from .report import write_report

    try:
        kwargs = {"thresholds": tuple(args.threshold)} if args.threshold else {}
        path = write_report(args.file, args.out, tokenizer=args.tokenizer, responses=args.responses,
                            batch_size=args.batch_size, **kwargs)
    except TrajectoryError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a tokenizer that does not load, a threshold out of range
        print(f"sae report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _demo(args) -> int:
    from ..lab.demo import DemoConfig, run  # lazily: the lab sits above the tools

    if args.tasks < 1 or args.samples < 1:
        print("sae demo: --tasks and --samples must be at least 1", file=sys.stderr)
        return 2
    print(run(args.out, DemoConfig(tasks=args.tasks, samples=args.samples, seed=args.seed),
              report=not args.no_report))
    return 0


def _lab(args) -> int:
    import dataclasses

    from .. import lab  # lazily: the lab sits above the tools

    try:
        config = lab.SweepConfig()
        if args.config:
            with open(args.config) as fh:
                config = lab.SweepConfig.from_dict(json.load(fh))
        if args.seeds is not None:
            config = dataclasses.replace(config, seeds=args.seeds)
        if config.seeds < 1:
            raise ValueError("seeds must be at least 1")
    except (OSError, ValueError, TypeError) as exc:
        print(f"sae lab: {exc}", file=sys.stderr)
        return 2
    results = lab.sweep(config, progress=args.progress)
    print(f"{config.tasks} tasks x {config.samples} responses per seed, {config.seeds} seeds; "
          f"mean ± 95% CI over seeds\n")
    for name, summary in results.items():
        print(f"critic: {name}\n{lab.format_table(summary)}\n")
    if args.out:
        doc = {"config": dataclasses.asdict(config),
               "results": {name: {"mean": s.mean, "ci95": s.ci95, "seeds": s.seeds} for name, s in results.items()}}
        with open(args.out, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
