"""The `sae` command line.

    sae validate FILE...   check Parquet / Arrow IPC files against the trajectory standard

Exit status: 0 when every file is good, 1 when a file is not, 2 for a usage error. Bad data is
reported as messages naming the file, column and first bad row, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .estimators import BOUNDARY_RULES, ESTIMATORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sae", description="sae-rl: advantage estimators and the trajectory "
                                                             "standard for LLM rollouts")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check files against the trajectory standard",
                         description="Check Parquet / Arrow IPC files against the trajectory standard "
                                     "(schemas/SPEC.md): one line per good file, the problems of a bad one.")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.add_argument("--estimator", choices=ESTIMATORS,
                     help="also check that the columns this estimator reads are present")
    val.add_argument("--boundary", choices=BOUNDARY_RULES, help="sae's boundary rule (default logprob)")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args)
    return 2  # pragma: no cover (argparse requires a command)


def _validate(args) -> int:
    from .trajectory import TrajectoryError, TrajectoryWarning, validate_file

    status = 0
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrajectoryWarning)
            try:
                summary = validate_file(path, estimator=args.estimator, boundary=args.boundary)
            except TrajectoryError as exc:
                status = 1
                for problem in exc.problems:
                    print(f"{path}: {problem}", file=sys.stderr)
                continue
        for w in caught:
            if issubclass(w.category, TrajectoryWarning):
                print(f"warning: {w.message}", file=sys.stderr)
        print(summary.line())
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
