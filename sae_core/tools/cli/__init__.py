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

import warnings

from .commands import COMMANDS
from .output import (EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _is_data_problem,
                     _print_warnings, _reason, _report_bug, _say, _say_problems, set_verbosity)
from .parser import build_parser, job_options


def main(argv: list[str] | None = None) -> int:
    """Run `sae` with `argv` (default: the process's arguments); returns the exit status (see the
    module docstring). Data and file-system problems become one line each on stderr; anything else
    escaping a command is a bug, shown with its traceback and a line asking to report it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `sae` alone: the whole help, as a usage error
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "batch_size", 1) < 1:
        _say(f"sae {args.command}: --batch-size must be at least 1", err=True)
        return EXIT_USAGE
    set_verbosity(args.verbosity)
    from ...extras import MissingExtra
    from ...trajectory import TrajectoryError, TrajectoryWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrajectoryWarning)  # collected; each message said once below
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say(f"sae {args.command}: interrupted", err=True)
        return EXIT_INTERRUPTED
    except MissingExtra as exc:  # an optional dependency the command needs: which extra to install
        _say(str(exc), err=True)  # it names the command and the extra
        return EXIT_USAGE
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
        _print_warnings(caught, quiet=args.verbosity < 0)


__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "job_options",
           "main"]
