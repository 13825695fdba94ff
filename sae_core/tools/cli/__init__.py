"""The `sae` command line.

    sae validate FILE...              check files against the trajectory standard
    sae recompute INPUT OUTPUT ...    estimators over saved rollouts (a file, a directory, a glob)
    sae inspect FILE                  a summary: lengths, boundaries, segments, advantage statistics
    sae report FILE --out PAGE.html   a self-contained HTML report with plots and a token view
    sae warmup                        compile the CPU kernels ahead of their first use

Exit status:
    0    everything went well
    1    a file is bad, a shard failed, or a file could not be read or written: one line per
         problem on stderr, naming the file and the reason (column and first bad row for bad
         data), never a traceback
    2    a usage error: a flag or value the command cannot take
    3    an internal error, i.e. a bug in sae-rl: the traceback, then a line asking to report it
    130  interrupted (Ctrl-C)
A reader that leaves early (`sae validate *.parquet | head -1`) is not an error: the command goes
on with its output discarded, so the status still says whether a bad file was seen.
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

    warm = sub.add_parser(
        "warmup", help="compile the CPU (numba) kernels ahead of their first use",
        description="Compile the numba kernels for each combination of the flags below, or load them from numba's "
                    "disk cache, so that the first advantage computation of a training run does not wait for "
                    "them: seconds once per machine and combination, then a fraction of a second per process.")
    warm.add_argument("--estimator", action="append", metavar="NAME[:k=v,...]",
                      help=f"{', '.join(estimators)}, with the options that choose its boundary rule "
                           "(e.g. sae:boundary=entropy). Repeatable. Default: sae")
    warm.add_argument("--dtype", action="append", choices=("float32", "float64"),
                      help="dtype of rewards and values (float32 also covers float16 and bfloat16). Repeatable. "
                           "Default: float32")
    warm.add_argument("--mask-dtype", action="append", choices=WARMUP_MASKS,
                      help="dtype of response_mask (none: no mask). Repeatable. Default: int64 (veRL)")
    warm.add_argument("--mask-mode", action="append", choices=registry.MASK_MODES,
                      help="skip (veRL) or zero (OpenRLHF). Repeatable. Default: skip")
    warm.add_argument("--critic-lam", type=float, default=None, help="a decoupled critic's lambda (VAPO)")

    return parser


WARMUP_MASKS = ("bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64", "none")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: list[str] | None = None) -> int:
    """Run `sae` with `argv` (default: the process's arguments); returns the exit status (see the
    module docstring). Data and file-system problems become one line each on stderr; anything else
    escaping a command is a bug, shown with its traceback and a line asking to report it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        _say(f"sae {args.command}: --batch-size must be at least 1", err=True)
        return EXIT_USAGE
    from ..trajectory import TrajectoryError, TrajectoryWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrajectoryWarning)  # one line per file, even if repeated
            return {"validate": _validate, "recompute": _recompute, "inspect": _inspect, "report": _report,
                    "demo": _demo, "lab": _lab, "warmup": _warmup}[args.command](args)
    except KeyboardInterrupt:
        _say(f"sae {args.command}: interrupted", err=True)
        return EXIT_INTERRUPTED
    except TrajectoryError as exc:  # from a command that does not name its files itself
        _say_problems(exc, exc.source or f"sae {args.command}")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 -- sorted below: a data or file problem, else a bug
        if _is_data_problem(exc):
            _say(f"sae {args.command}: {_reason(exc)}", err=True)
            return EXIT_FAILED
        _report_bug(args.command)
        return EXIT_BUG
    finally:  # outside the block: showwarning is Python's own again, not the recorder
        _print_warnings(caught)


def _say(text: str, *, err: bool = False) -> None:
    """Print a line to stdout (or stderr), at once. A reader that left (`sae validate ... | head
    -1`, a closed pipe) is not an error: the stream is pointed at /dev/null and the command goes
    on, so that its exit status still covers every file."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):  # a stream without a file descriptor: nothing to redirect
            pass


def _say_problems(exc, where: str) -> None:
    """One stderr line per problem of a TrajectoryError, each prefixed with the file."""
    for problem in exc.problems:
        _say(f"{where}: {problem}", err=True)


def _is_data_problem(exc: BaseException) -> bool:
    """Whether `exc` is about the files rather than sae-rl: the file system (OSError: ENOSPC,
    EROFS, EACCES, a path that exists...) or Arrow reading or writing one (ArrowException)."""
    if isinstance(exc, OSError):
        return True
    import pyarrow as pa  # lazily: `sae --help` need not import it

    return isinstance(exc, pa.ArrowException)


def _reason(exc: BaseException) -> str:
    """An exception as one line: `FILE: reason` for an OSError that names its file (not Python's
    `[Errno 28] reason: 'FILE'`), else its message (Arrow's can span several lines)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = _name(exc.filename) + ("" if exc.filename2 is None else f" -> {_name(exc.filename2)}")
        return " ".join(f"{where}: {exc.strerror}".split())
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _name(filename) -> str:
    return os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else str(filename)  # or an fd


def _about(path: str, exc: BaseException) -> str:
    """`path: reason`, the path not repeated when the reason starts with it."""
    reason = _reason(exc)
    return reason if reason.startswith(f"{path}: ") else f"{path}: {reason}"


def _report_bug(command: str) -> None:
    """The traceback of the exception being handled, then a line asking to report it."""
    import traceback

    from ..version import __version__

    try:
        traceback.print_exc()
    except BrokenPipeError:
        pass
    _say(f"sae {command}: internal error (a bug in sae-rl {__version__}, not a problem with your files); "
         "please report it with the command line and the traceback above", err=True)


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
            _say(f"warning: {w.message}", err=True)
        else:  # not ours: shown as Python would have shown it
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _validate(args) -> int:
    from ..trajectory import TrajectoryError, validate_file

    status = EXIT_OK
    boundary = getattr(args, _rule_option().name)
    for path in args.files:
        try:
            summary = validate_file(path, estimator=args.estimator, boundary=boundary)
        except TrajectoryError as exc:
            status = EXIT_FAILED
            _say_problems(exc, path)
            continue
        except Exception as exc:  # noqa: BLE001 -- a file the system cannot read goes like a bad one
            if not _is_data_problem(exc):
                raise
            status = EXIT_FAILED
            _say(_about(path, exc), err=True)
            continue
        _say(summary.line())
    return status


def _recompute(args) -> int:
    from ..trajectory import TrajectoryError
    from .recompute import plan_runs, recompute

    common = {o.name: getattr(args, o.name, None) for o in job_options()}
    try:
        runs = plan_runs(args.estimator or ["sae"], common)
        result = recompute(args.input, args.output, runs, engine=args.engine, batch_size=args.batch_size,
                           backend=args.backend, overwrite=args.overwrite, progress=args.progress,
                           ray_address=args.ray_address)
    except TrajectoryError as exc:
        _say_problems(exc, exc.source or "sae recompute")
        return EXIT_FAILED
    except ValueError as exc:  # a job that cannot run as asked: usage (Arrow's ValueErrors are not)
        if _is_data_problem(exc):
            raise
        _say(f"sae recompute: {exc}", err=True)
        return EXIT_USAGE
    for f in result.files:
        _say(f.line(), err=f.status == "failed")
    _say(result.summary())
    return EXIT_OK if result.ok else EXIT_FAILED


def _inspect(args) -> int:
    from ..trajectory import TrajectoryError
    from .summary import check_thresholds, inspect_file

    kwargs = {}
    if args.threshold:
        try:
            kwargs["thresholds"] = check_thresholds(args.threshold)
        except ValueError as exc:
            _say(f"sae inspect: --threshold: {exc}", err=True)
            return EXIT_USAGE
    try:
        inspection = inspect_file(args.file, batch_size=args.batch_size, **kwargs)
    except TrajectoryError as exc:
        _say_problems(exc, args.file)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 -- a file the system cannot read; anything else is a bug
        if not _is_data_problem(exc):
            raise
        _say(_about(args.file, exc), err=True)
        return EXIT_FAILED
    _say(json.dumps(inspection.to_dict(), indent=2) if args.json else inspection.format())
    return EXIT_OK


def _report(args) -> int:
    from ..trajectory import TrajectoryError
    from .report import check_out, load_tokenizer, write_report
    from .summary import check_thresholds

    kwargs = {}
    try:  # the arguments first, before the file is read
        if args.threshold:
            kwargs["thresholds"] = check_thresholds(args.threshold)
        if args.responses < 0:
            raise ValueError(f"--responses must be at least 0; got {args.responses}")
        check_out(args.out)
        tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    except (ValueError, OSError) as exc:  # a threshold out of range, an --out that cannot be a page,
        _say(f"sae report: {exc}", err=True)  # a tokenizer that does not load
        return EXIT_USAGE
    try:
        path = write_report(args.file, args.out, tokenizer=tokenizer, responses=args.responses,
                            batch_size=args.batch_size, **kwargs)
    except TrajectoryError as exc:
        _say_problems(exc, args.file)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 -- the page cannot be written (ENOSPC, EROFS, ...); else a bug
        if not _is_data_problem(exc):
            raise
        _say(f"sae report: {_reason(exc)}", err=True)
        return EXIT_FAILED
    _say(f"wrote {path}")
    return EXIT_OK


def _demo(args) -> int:
    from ..lab.demo import DemoConfig, run  # lazily: the lab sits above the tools

    if args.tasks < 1 or args.samples < 1:
        _say("sae demo: --tasks and --samples must be at least 1", err=True)
        return EXIT_USAGE
    _say(run(args.out, DemoConfig(tasks=args.tasks, samples=args.samples, seed=args.seed),
              report=not args.no_report))
    return EXIT_OK


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
        _say(f"sae lab: {_reason(exc)}", err=True)
        return EXIT_USAGE
    results = lab.sweep(config, progress=args.progress)
    _say(f"{config.tasks} tasks x {config.samples} responses per seed, {config.seeds} seeds; "
         f"mean ± 95% CI over seeds\n")
    for name, summary in results.items():
        _say(f"critic: {name}\n{lab.format_table(summary)}\n")
    if args.out:
        doc = {"config": dataclasses.asdict(config),
               "results": {name: {"mean": s.mean, "ci95": s.ci95, "seeds": s.seeds} for name, s in results.items()}}
        with open(args.out, "w") as fh:
            json.dump(doc, fh, indent=1)
        _say(f"wrote {args.out}")
    return EXIT_OK


def _warmup(args) -> int:
    import itertools

    from .. import kernels

    try:
        runs = [registry.parse_run(text) for text in args.estimator or ["sae"]]
    except (ValueError, TypeError) as exc:
        _say(f"sae warmup: {exc}", err=True)
        return EXIT_USAGE
    total = 0.0
    for (name, options), dtype, mask, mode in itertools.product(runs, args.dtype or ["float32"],
                                                                args.mask_dtype or ["int64"],
                                                                args.mask_mode or ["skip"]):
        kw = {"mask_mode": mode, "critic_lam": args.critic_lam, **options}
        try:
            seconds = kernels.warmup(name, dtype=dtype, mask_dtype=None if mask == "none" else mask, **kw)
        except (ValueError, TypeError) as exc:
            _say(f"sae warmup: {exc}", err=True)
            return EXIT_USAGE
        total += seconds
        _say(f"{name} {dtype} values, {mask} mask, {kw['mask_mode']} mode: {seconds:.2f} s")
    from ..kernels import numba_compile, numba_scan

    where = numba_compile.cache_dir(numba_scan._scan) or "none (no writable directory: each process compiles)"
    _say(f"{total:.1f} s in all; {numba_compile.NOTICE.compiled} compiled, the rest loaded; numba cache: {where}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
