"""The text tables `sae inspect` prints (`Inspection.format()`, drawn by rich: `text_table`), and
the parameter words the report shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import registry

if TYPE_CHECKING:
    from .summary import Inspection, OutputSet


# Why the valid counts of the standard's float columns are 0: the one validation refuses such files.
NONFINITE_NOTE = ("a file with NaN or inf on a valid token of a standard float column is refused, so those "
                  "counts are 0;\nmasked tokens and columns the standard does not name may hold anything")


def text_table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """The lines of a plain-text table drawn by rich: the first `left` columns left-aligned (labels;
    their leading spaces kept, to indent rows under a heading), the others right-aligned (numbers).

    header: one title per column, or None for no header line; rows: cells as strings, one sequence
    per row, each as long as the widest. Columns are as wide as their widest cell and always at least
    two spaces apart, whatever the values; a cell is never wrapped or cut; no ANSI escapes (the lines
    go to pipes and files as well as to terminals); trailing spaces removed."""
    import io

    from rich.console import Console  # lazily: `sae --help` and the API need not import it
    from rich.table import Table
    from rich.text import Text

    columns = len(header) if header is not None else max((len(r) for r in rows), default=0)
    if any(len(r) != columns for r in rows):
        raise ValueError(f"rows must have {columns} cells each; got {sorted({len(r) for r in rows})}")
    table = Table(box=None, show_header=header is not None, pad_edge=False, show_edge=False, padding=(0, 1),
                  header_style="", highlight=False)
    for i in range(columns):
        # overflow "fold" only because rich skips justification with "ignore"; nothing folds at this width
        table.add_column(Text(header[i]) if header is not None else "", justify="left" if i < left else "right",
                         no_wrap=True, overflow="fold")
    for r in rows:
        table.add_row(*(Text(cell) for cell in r))  # Text: a "[" in a label is not rich markup
    # the width only bounds the table, which takes its natural width: wide, so that nothing wraps
    console = Console(file=io.StringIO(), width=1 << 16, color_system=None, force_terminal=False, no_color=True,
                      legacy_windows=False, highlight=False, markup=False, emoji=False)
    console.print(table)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if _missing(x) else f"{x:.{digits}g}"


def _int(x: float | None) -> str:
    if _missing(x):
        return "-"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}%"


def describe_params(params: dict[str, Any]) -> str:
    """The recorded parameters of a set, but its estimator's name, as `k=v` words: the boundary
    rule and its option first, then the estimator's other options, then the common arguments (the
    registry's order), then any others sorted."""
    first = _param_order()
    keys = [k for k in first if k in params] + sorted(k for k in params if k not in first)
    words = []
    for k, v in ((k, params[k]) for k in keys):
        if k == "estimator" or v is None:
            continue
        words.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(words)


def set_params(s: OutputSet) -> str:
    """A set's parameter words (`describe_params`), or why the recorded ones were set aside."""
    if s.invalid:
        return f"(recorded parameters not valid: {s.invalid})"
    return describe_params(s.params)


def _param_order() -> list[str]:
    rule_options = [r.option for r in registry.RULES.values() if r.option]
    choosers = [o.name for o in registry.OPTIONS.values() if o.kind == "rule"]
    others = [n for n in registry.OPTIONS if n not in rule_options and n not in choosers]
    return [*choosers, *rule_options, *others, *registry.COMMON]


def format_lines(ins: Inspection) -> list[str]:
    """The lines of `Inspection.format()`: what `sae inspect` prints."""
    out = [f"{ins.path}"]
    meta = f"spec {ins.spec_version}" + ("" if ins.has_metadata else " (no sae_rl metadata: assumed)")
    if ins.producer:
        meta += f", written by {ins.producer}"
    out.append("  " + meta)
    if ins.mapped:  # columns of other names (--column, veRL / OpenRLHF names): what is read as what
        out.append("  columns read as " + ", ".join(f"{k}={v}" for k, v in ins.mapped.items()))
    share = f" ({100 * ins.valid_tokens / ins.tokens:.1f}%)" if ins.tokens else ""
    out.append(f"  rows {ins.rows:,}  ({ins.empty_rows:,} empty, "
               f"{ins.rows_without_valid:,} without a valid token)")
    out.append(f"  tokens {ins.tokens:,}, valid (response_mask 1) {ins.valid_tokens:,}{share}")
    out.append("")
    out += text_table(["response length", "min", "mean", "p50", "p90", "max"],
                      [[label, _int(s.min), _num(s.mean, digits=5), _int(s.p50), _int(s.p90), _int(s.max)]
                       for label, s in (("  tokens", ins.lengths), ("  valid tokens", ins.valid_lengths))])

    out.append("")
    if not ins.sets:
        out.append("output sets: none (no advantages column)")
    else:
        out.append("output sets (advantages over valid tokens)")
        out += text_table(None, [[f"  {s.name}", f"{s.estimator} {set_params(s)}".rstrip()] for s in ins.sets],
                          left=2)
        out.append("")
        out += text_table(["advantages", "mean", "std", "min", "p01", "p50", "p99", "max", "ret mean"],
                          [[f"  {s.name}", *(_num(x) for x in (s.advantages.mean, s.advantages.std, s.advantages.min,
                                                               s.advantages.p01, s.advantages.p50, s.advantages.p99,
                                                               s.advantages.max, s.returns_mean))]
                           for s in ins.sets])
        if any(not s.advantages.exact for s in ins.sets):
            size = max(s.sample.size for s in ins.sets if not s.advantages.exact)
            out.append(f"  (p01/p50/p99 from a uniform sample of {size:,} valid tokens per column)")

    rows = [(s.segments, f"{'boundaries' + s.suffix}") for s in ins.sets if s.segments is not None]
    rows += [(t.segments, f"logprobs < log {t.threshold:g}" + (" *" if t.recorded_by else ""))
             for t in ins.thresholds]
    out.append("")
    if rows:
        out += text_table(["segments (valid tokens)", "boundary", "segments", "mean", "p50", "p90", "max"],
                          [[f"  {label}", _pct(sg.fraction), f"{sg.lengths.count:,}", _num(sg.lengths.mean),
                            _int(sg.lengths.p50), _int(sg.lengths.p90), _int(sg.lengths.max)] for sg, label in rows])
        marked = [t for t in ins.thresholds if t.recorded_by]
        for t in marked:
            out.append(f"  * p={t.threshold:g}: the threshold of {', '.join(t.recorded_by)}")
    if not ins.has_logprobs:
        out.append("no logprobs column: no logprob-rule boundaries")

    if ins.correlations:
        out.append("")
        out.append("correlations of advantages (Pearson, valid tokens)")
        # columns numbered, rows named with their number: as wide as the names once, not per column
        names = [s.name for s in ins.sets]
        r = {(c.a, c.b): c.r for c in ins.correlations}
        r.update({(c.b, c.a): c.r for c in ins.correlations})

        def cell(a: str, b: str) -> str:
            return "1.000" if a == b else ("-" if math.isnan(r[(a, b)]) else f"{r[(a, b)]:.3f}")

        out += text_table(["", *(f"({i})" for i in range(1, len(names) + 1))],
                          [[f"  ({i}) {a}", *(cell(a, b) for b in names)] for i, a in enumerate(names, start=1)])

    if ins.nonfinite:
        out.append("")
        out += text_table(["non-finite values", "NaN", "inf", "NaN valid", "inf valid"],
                          [[f"  {n.column}" + (" (row)" if n.level == "row" else ""), f"{n.nan:,}", f"{n.inf:,}",
                            _int(n.nan_valid), _int(n.inf_valid)] for n in ins.nonfinite])
        out += [f"  {line}" for line in f"({NONFINITE_NOTE})".splitlines()]
    return out


__all__ = ["NONFINITE_NOTE", "describe_params", "format_lines", "set_params", "text_table"]
