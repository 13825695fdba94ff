"""A one-page HTML report on a trajectory file: `sae report FILE --out report.html`.

`write_report` summarises the file with `sae_core.tools.summary.inspect_file`, draws matplotlib
plots (response lengths, segment lengths per threshold and per output set, advantages per set) and
shows a few responses: their V(t) and A(t) curves for every set with each set's boundaries drawn
(inline SVG), every set side by side under the same tokens (a strip per set), and the tokens
coloured by one set's advantage (`color_by`) on a diverging scale, boundaries marked with a bar on
the token's left, masked tokens greyed, and a tooltip with the token's t, id, logprob, value and
advantage in every set. A lab file's exact advantages (`true_advantages`) are drawn beside the sets
and each set is scored against them (Pearson r, mse, bias).

The page is self-contained: inline CSS, plots as base64 PNG data URIs and inline SVG, no script, no external
font, link or image, so it opens offline and can be mailed or archived as one file.

Modules: `selection` (which responses, their tokens), `plots` (the figures), `html` (the page).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import trajectory as tj
from ...atomic import write_text_atomic
from ...extras import require
from ..summary import DEFAULT_THRESHOLDS, Inspection, inspect_file
from .html import Exact, render, token_texts
from .many import INDEX, Page, check_out_dir, page_names, render_index
from .selection import Response, boundary_marks, fetch_responses, pick_responses


def write_report(path: str | os.PathLike, out: str | os.PathLike, *, tokenizer: Any = None,
                 responses: int = 4, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, max_tokens: int = 1500,
                 batch_size: int = 4096, color_by: str | None = None, column_map: Any = None,
                 progress: bool | None = False) -> Path:
    """Write the HTML report on trajectory file `path` to `out` (replaced if it exists), atomically.
    (`write_report_with_summary` also returns the file's summary; `write_reports` reports on several
    files, a page each and an index comparing them.)

    tokenizer: None (tokens shown as ids), a local path or cached name for
        `transformers.AutoTokenizer.from_pretrained` (no download is attempted), or a tokenizer
        object with `decode` (and optionally `batch_decode`).
    responses: how many responses the token view shows, picked deterministically (see
        `pick_responses`): the shortest non-empty, the median and the longest response, the one
        with the most boundaries, the one with the most masked tokens, then responses spread
        evenly over the lengths.
    thresholds: probabilities p for the logprob-rule segments (see `inspect_file`).
    color_by: the output set whose advantages colour the tokens: its advantages column
        (`advantages_sae`) or its suffix (`sae`, `_sae`); default the first set with boundaries, else
        the first set. ValueError (naming the sets) for one the file lacks.
    When the file has the exact advantages of the lab (`EXACT_ADVANTAGES`, `true_advantages`; and
    `EXACT_VALUES`, `true_values`), the page shows them beside every set (curves, a strip under the
    tokens) and each set's Pearson r with them over valid tokens (one more streaming pass).
    max_tokens: tokens shown per response at most; a longer one shows its first two thirds and
        its last third of these, with the gap marked (keeps the page small for long responses).
    progress: a bar on stderr through the report's steps (the summary pass over the file, the
        picked rows, the exact advantages, the page); None: when stderr is a terminal.
    column_map: a `trajectory.ColumnMap` (or {standard: theirs}): how the file's columns of other
        names are read (`inspect_file`).
    Returns the Path written. Raises TrajectoryError for a file not in the standard (the checks of
    `sae_core.trajectory.validate_file`), ValueError for a tokenizer that cannot be loaded or an
    argument out of range, IsADirectoryError / NotADirectoryError for an `out` that cannot be a
    file (checked before the file is read), OSError naming `out` when the page cannot be written
    (a full disk, a read-only directory; no temporary file is left), and
    `sae_core.extras.MissingExtra` (one line naming the `report` extra) without matplotlib, before
    the file is read.
    """
    return write_report_with_summary(path, out, tokenizer=tokenizer, responses=responses, thresholds=thresholds,
                                     max_tokens=max_tokens, batch_size=batch_size, color_by=color_by,
                                     column_map=column_map, progress=progress)[0]


def write_report_with_summary(path: str | os.PathLike, out: str | os.PathLike, *, tokenizer: Any = None,
                              responses: int = 4, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                              max_tokens: int = 1500, batch_size: int = 4096, color_by: str | None = None,
                              column_map: Any = None, progress: bool | None = False) -> tuple[Path, Inspection]:
    """`write_report` (the same arguments and errors), returning the Path written and the file's
    summary (`inspect_file`'s `Inspection`), from which `write_reports` builds its index."""
    require_matplotlib()
    if responses < 0 or max_tokens < 2:
        raise ValueError(f"responses must be >= 0 and max_tokens >= 2; got {responses} and {max_tokens}")
    out = check_out(out)
    if color_by is not None and not isinstance(color_by, str):
        raise ValueError(f"color_by must be a set name or None; got {type(color_by).__name__}")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    step = _steps(progress, 4)
    step("summary pass over the file")
    ins = inspect_file(path, thresholds=tuple(thresholds), batch_size=batch_size, column_map=column_map)
    marks = boundary_marks(ins)
    picks = pick_responses(ins, responses, None if marks is None else marks.segments.row_boundaries)
    colour = resolve_color_by(ins, color_by)
    step(f"reading the {len(picks)} responses shown")
    fetched = fetch_responses(path, ins, picks, batch_size, None if marks is None else marks.threshold)
    step("exact advantages" if EXACT_ADVANTAGES in ins.columns else "no exact advantages")
    exact = exact_advantages(path, ins, [r.row for r in fetched], batch_size)
    step("plots and page")
    page = render(ins, fetched, tok, max_tokens=max_tokens, color_by=colour, exact=exact)
    step(None)
    try:
        if isinstance(out, str):  # a URI: written whole or not at all by its filesystem's move
            return tj.paths.write_bytes(out, page.encode("utf-8"), overwrite=True), ins
        return write_text_atomic(out, page, overwrite=True), ins
    except OSError as exc:
        if exc.errno is None:
            raise
        # the error names the temporary file beside `out`; the user knows `out`
        raise OSError(exc.errno, f"cannot write the report: {exc.strerror}", os.fspath(out)) from None


def write_reports(files: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False,
                  on_page: Callable[[Page], None] | None = None, **options: Any) -> tuple[list[Page], Path]:
    """Report on several trajectory files: a page per file under the directory `out` (named by
    `page_names`: each file's path under the deepest directory holding them all, ".html" added),
    then `out/index.html` comparing the files (`render_index`), each written atomically.

    options: those of `write_report` (tokenizer, responses, thresholds, max_tokens, batch_size,
        color_by, column_map, progress), the same for every file; a tokenizer path is loaded once.
    overwrite: replace pages that exist; without it, an existing page or index raises
        FileExistsError before any file is read (`check_out_dir`).
    on_page: called with each file's `Page` as soon as it is done (to say so as the job goes).
    A file that cannot be reported (not in the standard, unreadable, lacking the `color_by` set, a
    page that cannot be written) does not stop the others: its `Page` has its problems and the index
    lists it. Returns the Pages, in the order of `files`, and the index's Path. Raises as
    `write_report` does for bad arguments (before any file is read), ValueError from `page_names`,
    NotADirectoryError for an `out` that is a file, OSError when the index cannot be written.
    """
    import pyarrow as pa

    require_matplotlib()
    names = page_names(files)
    out = check_out_dir(out, names, overwrite=overwrite)
    if options.get("tokenizer") is not None:
        options["tokenizer"] = load_tokenizer(options["tokenizer"])
    pages = []
    for f, name in zip(files, names, strict=True):
        dst = out / name
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            page = Page(os.fspath(f), dst, write_report_with_summary(f, dst, **options)[1])
        except tj.TrajectoryError as exc:
            page = Page(os.fspath(f), dst, problems=tuple(str(p) for p in exc.problems))
        except (OSError, pa.ArrowException, ColorByError) as exc:  # the file or its page; anything else: a bug
            page = Page(os.fspath(f), dst, problems=(_one_line(exc),))
        pages.append(page)
        if on_page is not None:
            on_page(page)
    return pages, write_text_atomic(out / INDEX, render_index(pages, out), overwrite=True)


def _one_line(exc: BaseException) -> str:
    """`FILE: reason` for an OSError naming its file (not `[Errno 28] reason: 'FILE'`), else the message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _steps(progress: bool | None, total: int):
    """A function step(what): advances a tqdm bar on stderr to the step `what` (None: done, the bar
    closed); a no-op without a bar (progress False, or None with stderr not a terminal)."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return lambda what: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="report", unit=" steps", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n}/{total} steps |{bar}| {elapsed} {postfix}")
    started = [False]

    def step(what: str | None) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        if what is None:
            bar.set_postfix_str("done")
            bar.close()
        else:
            bar.set_postfix_str(what)
    return step


EXACT_ADVANTAGES = "true_advantages"  # the lab's exact advantages (sae_core.lab.demo.write_rollouts)
EXACT_VALUES = "true_values"


class ColorByError(ValueError):
    """`color_by` names no output set of the file (a usage error for one file; a failed page among several)."""


def resolve_color_by(ins: Inspection, color_by: str | None) -> str | None:
    """The name (advantages column) of the set `color_by` names (the column, or its suffix with or
    without the underscore); None for None. Raises ValueError listing the file's sets otherwise."""
    if color_by is None:
        return None
    for s in ins.sets:
        if color_by in (s.name, s.suffix, s.suffix.lstrip("_")):
            return s.name
    names = ", ".join(s.name for s in ins.sets) or "none: the file has no advantages column"
    raise ColorByError(f"color_by {color_by!r} names no output set of the file; its sets: {names}")


def exact_advantages(path: str | os.PathLike, ins: Inspection, rows: Sequence[int], batch_size: int = 4096
                     ) -> Exact | None:
    """The file's exact advantages (`EXACT_ADVANTAGES`), or None when it lacks them: each set's
    Pearson r, mean squared error and bias (mean of set - exact) over valid tokens with finite
    values ({set: (r, mse, bias, tokens)}, r NaN without variance), and the [L] float64 exact
    advantages and values (`EXACT_VALUES`, when present) of `rows`. One streaming pass over the
    columns it needs; memory: one batch."""
    if EXACT_ADVANTAGES not in ins.columns:
        return None
    has_v = EXACT_VALUES in ins.columns
    sets = [s.name for s in ins.sets]
    cols = [EXACT_ADVANTAGES] + ([EXACT_VALUES] if has_v else []) + sets
    cols += ["response_mask"] if "response_mask" in ins.columns else []
    sums = {n: np.zeros(6) for n in sets}  # n, sx, sy, sxx, syy, sxy
    wanted, adv, val, first = set(rows), {}, {}, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        for batch in tj.iter_batches(path, batch_size=batch_size, columns=cols, validate=False,
                                     column_map=dict(ins.mapped) or None):
            rag = tj.to_ragged(batch, cols)
            t, offsets = rag.tokens, np.asarray(rag.offsets)
            x = np.asarray(t[EXACT_ADVANTAGES], dtype=np.float64)
            valid = (np.asarray(t["response_mask"]) != 0) if "response_mask" in t else np.ones(x.size, bool)
            for n in sets:
                y = np.asarray(t[n], dtype=np.float64)
                ok = valid & np.isfinite(x) & np.isfinite(y)
                a, b = x[ok], y[ok]
                sums[n] += [a.size, a.sum(), b.sum(), a @ a, b @ b, a @ b]
            for r in wanted:
                if first <= r < first + batch.num_rows:
                    lo, hi = int(offsets[r - first]), int(offsets[r - first + 1])
                    adv[r] = x[lo:hi].copy()
                    if has_v:
                        val[r] = np.asarray(t[EXACT_VALUES][lo:hi], dtype=np.float64)
            first += batch.num_rows
    corr = {}
    for n, (k, sx, sy, sxx, syy, sxy) in sums.items():
        cov, vx, vy = sxy - sx * sy / max(k, 1), sxx - sx * sx / max(k, 1), syy - sy * sy / max(k, 1)
        r = float(cov / math.sqrt(vx * vy)) if k > 1 and vx > 0 and vy > 0 else math.nan
        mse = (syy - 2 * sxy + sxx) / k if k else math.nan
        corr[n] = (r, float(mse), float((sy - sx) / k) if k else math.nan, int(k))
    return Exact(EXACT_ADVANTAGES, corr, adv, EXACT_VALUES if has_v else None, val)


def require_matplotlib(needed_by: str = "sae report") -> None:
    """Raise `sae_core.extras.MissingExtra` (`sae report needs matplotlib: pip install
    "matplotlib>=3.7"` (sae-rl's "report" extra)) unless matplotlib, which draws the report's plots, is installed."""
    require("matplotlib", extra="report", needed_by=needed_by)


def check_out(out: str | os.PathLike) -> Path | str:
    """`out` as a Path if a page can be written there: not an existing directory, and no parent
    that exists as something other than a directory. Raises IsADirectoryError or
    NotADirectoryError saying so (the write itself can still fail: a full disk, no permission).
    A URI (`s3://...`, `memory://...`; `trajectory.paths`) is returned as it is: its filesystem
    says what is wrong when the page is written."""
    if tj.paths.is_remote(out):
        return str(out)
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


__all__ = ["EXACT_ADVANTAGES", "EXACT_VALUES", "INDEX", "ColorByError", "Exact", "Page", "Response", "check_out",
           "check_out_dir", "exact_advantages", "load_tokenizer", "page_names", "pick_responses", "render",
           "render_index", "require_matplotlib", "resolve_color_by", "token_texts", "write_report",
           "write_report_with_summary", "write_reports"]
