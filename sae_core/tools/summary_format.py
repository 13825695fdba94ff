"""The text table `sae inspect` prints (`Inspection.format()`), and the parameter words the
report shares."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import registry

if TYPE_CHECKING:
    from .summary import Inspection, OutputSet


# Why the valid counts of the standard's float columns are 0: the one validation refuses such files.
NONFINITE_NOTE = ("a file with NaN or inf on a valid token of a standard float column is refused, so those "
                  "counts are 0;\nmasked tokens and columns the standard does not name may hold anything")


def _cell(text: str, width: int) -> str:
    """`text` right-aligned in `width` columns, and always after at least one space: a value wider
    than its column pushes the row right rather than running into its neighbour."""
    return text.rjust(width) if len(text) < width else " " + text


def _num(x: float | None, width: int = 9, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return _cell("-", width)
    return _cell(f"{x:.{digits}g}", width)


def _int(x: float | None, width: int = 9) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return _cell("-", width)
    return _cell(f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}", width)


def _pct(x: float, width: int = 9) -> str:
    return _cell("-" if math.isnan(x) else f"{100 * x:.2f}%", width)


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
    out.append(f"{'response length':<24}{'min':>9}{'mean':>9}{'p50':>9}{'p90':>9}{'max':>9}")
    for label, s in (("  tokens", ins.lengths), ("  valid tokens", ins.valid_lengths)):
        out.append(f"{label:<24}{_int(s.min)}{_num(s.mean, digits=5)}{_int(s.p50)}{_int(s.p90)}{_int(s.max)}")

    out.append("")
    if not ins.sets:
        out.append("output sets: none (no advantages column)")
    else:
        out.append("output sets (advantages over valid tokens)")
        width = max(24, max(len(s.name) for s in ins.sets) + 4)
        for s in ins.sets:
            out.append(f"  {s.name:<{width - 2}}{s.estimator} {set_params(s)}".rstrip())
        out.append("")
        out.append(f"{'advantages':<{width}}{'mean':>9}{'std':>9}{'min':>9}{'p01':>9}{'p50':>9}{'p99':>9}"
                   f"{'max':>9}{'ret mean':>10}")
        for s in ins.sets:
            a = s.advantages
            out.append(f"  {s.name:<{width - 2}}{_num(a.mean)}{_num(a.std)}{_num(a.min)}{_num(a.p01)}"
                       f"{_num(a.p50)}{_num(a.p99)}{_num(a.max)} {_num(s.returns_mean)}")
        if any(not s.advantages.exact for s in ins.sets):
            size = max(s.sample.size for s in ins.sets if not s.advantages.exact)
            out.append(f"  (p01/p50/p99 from a uniform sample of {size:,} valid tokens per column)")

    rows = [(s.segments, f"{'boundaries' + s.suffix}") for s in ins.sets if s.segments is not None]
    rows += [(t.segments, f"logprobs < log {t.threshold:g}" + (" *" if t.recorded_by else ""))
             for t in ins.thresholds]
    out.append("")
    if rows:
        width = max(24, max(len(label) for _, label in rows) + 4)
        out.append(f"{'segments (valid tokens)':<{width}}{'boundary':>9}{'segments':>11}{'mean':>9}{'p50':>9}"
                   f"{'p90':>9}{'max':>9}")
        for sg, label in rows:
            ls = sg.lengths
            out.append(f"  {label:<{width - 2}}{_pct(sg.fraction)}{_cell(f'{ls.count:,}', 11)}{_num(ls.mean)}"
                       f"{_int(ls.p50)}{_int(ls.p90)}{_int(ls.max)}")
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
        labels = [f"({i}) {n}" for i, n in enumerate(names, start=1)]
        width = max(24, max(len(x) for x in labels) + 4)
        r = {(c.a, c.b): c.r for c in ins.correlations}
        r.update({(c.b, c.a): c.r for c in ins.correlations})
        col = 8
        out.append(" " * width + "".join(_cell(f"({i})", col) for i in range(1, len(names) + 1)))
        for a, label in zip(names, labels, strict=True):
            cells = "".join(_cell("1.000" if a == b else ("-" if math.isnan(r[(a, b)]) else f"{r[(a, b)]:.3f}"), col)
                            for b in names)
            out.append(f"  {label:<{width - 2}}{cells}")

    if ins.nonfinite:
        out.append("")
        width = max(24, max(len(n.column) for n in ins.nonfinite) + 4)
        out.append(f"{'non-finite values':<{width}}{'NaN':>9}{'inf':>9}{'NaN valid':>11}{'inf valid':>11}")
        for n in ins.nonfinite:
            label = n.column + (" (row)" if n.level == "row" else "")
            out.append(f"  {label:<{width - 2}}{_cell(f'{n.nan:,}', 9)}{_cell(f'{n.inf:,}', 9)}{_int(n.nan_valid, 11)}"
                       f"{_int(n.inf_valid, 11)}")
        out += [f"  {line}" for line in f"({NONFINITE_NOTE})".splitlines()]
    return out


__all__ = ["NONFINITE_NOTE", "describe_params", "format_lines", "set_params"]
