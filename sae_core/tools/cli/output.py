"""What the `sae` commands print, and how an exception becomes one line and an exit status."""

from __future__ import annotations

import os
import sys
import warnings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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

    from ...version import __version__

    try:
        traceback.print_exc()
    except BrokenPipeError:
        pass
    _say(f"sae {command}: internal error (a bug in sae-rl {__version__}, not a problem with your files); "
         "please report it with the command line and the traceback above", err=True)



def set_verbosity(level: int) -> None:
    """-q (level -1): only errors; default (0): warnings, including the kernels' one-line compile
    notice; -v (1): also what sae_core logs at INFO (each compilation and its duration). Applies to
    the `sae_core` logger, which prints bare lines on stderr."""
    import logging

    logger = logging.getLogger("sae_core")
    logger.setLevel({-1: logging.ERROR, 0: logging.WARNING}.get(level, logging.INFO))
    if not any(getattr(h, "_sae_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._sae_cli = True
        logger.addHandler(handler)
        logger.propagate = False


def _print_warnings(caught, *, quiet: bool = False) -> None:
    """The warnings a command raised: ours (TrajectoryWarning) as `warning: ...` lines on stderr,
    each message once however often it was raised, none when quiet (-q); others as Python shows them."""
    from ...trajectory import TrajectoryWarning

    said: set[str] = set()
    for w in caught:
        if issubclass(w.category, TrajectoryWarning):
            text = str(w.message)
            if not quiet and text not in said:
                _say(f"warning: {text}", err=True)
            said.add(text)
        else:  # not ours: shown as Python would have shown it
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
