"""A one-page HTML report on a trajectory file: `sae report FILE --out report.html`.

`write_report` summarises the file with `sae_core.tools.summary.inspect_file`, draws matplotlib
plots (response lengths, segment lengths per threshold and per output set, advantages per set) and
shows a few responses token by token: each token coloured by its advantage on a diverging scale,
boundaries marked with a bar on the token's left, masked tokens greyed, and a tooltip with the
token's t, id, logprob, value and advantage in every set.

The page is self-contained: inline CSS, plots as base64 PNG data URIs, no script, no external
font, link or image, so it opens offline and can be mailed or archived as one file.

Modules: `selection` (which responses, their tokens), `plots` (the figures), `html` (the page).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...atomic import write_text_atomic
from ...extras import require
from ..summary import DEFAULT_THRESHOLDS, inspect_file
from .html import render, token_texts
from .selection import Response, boundary_marks, fetch_responses, pick_responses


def write_report(path: str | os.PathLike, out: str | os.PathLike, *, tokenizer: Any = None,
                 responses: int = 4, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, max_tokens: int = 1500,
                 batch_size: int = 4096) -> Path:
    """Write the HTML report on trajectory file `path` to `out` (replaced if it exists), atomically.

    tokenizer: None (tokens shown as ids), a local path or cached name for
        `transformers.AutoTokenizer.from_pretrained` (no download is attempted), or a tokenizer
        object with `decode` (and optionally `batch_decode`).
    responses: how many responses the token view shows, picked deterministically (see
        `pick_responses`): the shortest non-empty, the median and the longest response, the one
        with the most boundaries, the one with the most masked tokens, then responses spread
        evenly over the lengths.
    thresholds: probabilities p for the logprob-rule segments (see `inspect_file`).
    max_tokens: tokens shown per response at most; a longer one shows its first two thirds and
        its last third of these, with the gap marked (keeps the page small for long responses).
    Returns the Path written. Raises TrajectoryError for a file not in the standard (the checks of
    `sae_core.trajectory.validate_file`), ValueError for a tokenizer that cannot be loaded or an
    argument out of range, IsADirectoryError / NotADirectoryError for an `out` that cannot be a
    file (checked before the file is read), OSError naming `out` when the page cannot be written
    (a full disk, a read-only directory; no temporary file is left), and
    `sae_core.extras.MissingExtra` (one line naming the `report` extra) without matplotlib, before
    the file is read.
    """
    require_matplotlib()
    if responses < 0 or max_tokens < 2:
        raise ValueError(f"responses must be >= 0 and max_tokens >= 2; got {responses} and {max_tokens}")
    out = check_out(out)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    ins = inspect_file(path, thresholds=tuple(thresholds), batch_size=batch_size)
    marks = boundary_marks(ins)
    picks = pick_responses(ins, responses, None if marks is None else marks.segments.row_boundaries)
    fetched = fetch_responses(path, ins, picks, batch_size, None if marks is None else marks.threshold)
    page = render(ins, fetched, tok, max_tokens=max_tokens)
    try:
        return write_text_atomic(out, page, overwrite=True)
    except OSError as exc:
        if exc.errno is None:
            raise
        # the error names the temporary file beside `out`; the user knows `out`
        raise OSError(exc.errno, f"cannot write the report: {exc.strerror}", os.fspath(out)) from None


def require_matplotlib(needed_by: str = "sae report") -> None:
    """Raise `sae_core.extras.MissingExtra` (`sae report needs matplotlib: pip install
    "matplotlib>=3.7"` (sae-rl's "report" extra)) unless matplotlib, which draws the report's plots, is installed."""
    require("matplotlib", extra="report", needed_by=needed_by)


def check_out(out: str | os.PathLike) -> Path:
    """`out` as a Path if a page can be written there: not an existing directory, and no parent
    that exists as something other than a directory. Raises IsADirectoryError or
    NotADirectoryError saying so (the write itself can still fail: a full disk, no permission)."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory: give the path of the page to write, "
                                f"e.g. {out / 'report.html'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {out}: {parent} is not a directory")
            break
    return out


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer from an object with `decode` (returned as it is) or a local path / cached name
    (`transformers.AutoTokenizer`, never downloading). Raises ValueError when it cannot load."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        if not hasattr(tokenizer, "decode"):
            raise ValueError("tokenizer must be a path or an object with decode(); "
                             f"got {type(tokenizer).__name__}")
        return tokenizer
    try:
        import transformers  # lazily: a heavy import, needed only for decoded tokens
    except ImportError:
        raise ValueError("decoding tokens needs the transformers package (pip install transformers); "
                         "without a tokenizer the report shows token ids") from None
    try:
        # local_files_only: a report never downloads anything
        return transformers.AutoTokenizer.from_pretrained(os.fspath(tokenizer), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load a tokenizer from {os.fspath(tokenizer)!r}: {exc}") from None


__all__ = ["Response", "check_out", "load_tokenizer", "pick_responses", "render", "require_matplotlib",
           "token_texts", "write_report"]
