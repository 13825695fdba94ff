"""A one-page HTML report on a trajectory file: `sae report FILE --out report.html`.

`write_report` summarises the file with `sae_core.inspect.inspect_file`, draws matplotlib plots
(response lengths, segment lengths per threshold and per output set, advantages per set) and shows
a few responses token by token: each token coloured by its advantage on a diverging scale,
boundaries marked with a bar on the token's left, masked tokens greyed, and a tooltip with the
token's t, id, logprob, value and advantage in every set.

The page is self-contained: inline CSS, plots as base64 PNG data URIs, no script, no external
font, link or image, so it opens offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import trajectory as tj
from .inspect import DEFAULT_THRESHOLDS, Inspection, OutputSet, Segments, describe_params, inspect_file

# The diverging colour scale of the token view: 2 * _HALF + 1 steps, white-ish at 0.
_HALF = 8
_CMAP = "RdBu"  # red: negative advantage, blue: positive
_SET_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Response:
    """One row picked for the token view. Token arrays are [L] numpy (None when the file lacks the
    column); advantages and boundaries are {set name: [L]}."""

    row: int
    why: str
    ids: np.ndarray
    valid: np.ndarray
    logprobs: np.ndarray | None
    values: np.ndarray | None
    advantages: dict[str, np.ndarray]
    boundaries: dict[str, np.ndarray]


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
    Returns the Path written. Raises TrajectoryError for a file not in the standard, ValueError for
    a tokenizer that cannot be loaded.
    """
    if responses < 0 or max_tokens < 2:
        raise ValueError(f"responses must be >= 0 and max_tokens >= 2; got {responses} and {max_tokens}")
    tok = _load_tokenizer(tokenizer) if tokenizer is not None else None
    ins = inspect_file(path, thresholds=tuple(thresholds), batch_size=batch_size)
    marks = _boundary_source(ins)
    picks = pick_responses(ins, responses, None if marks is None else marks.segments.row_boundaries)
    fetched = _fetch(path, ins, picks, batch_size, None if marks is None else marks.threshold)
    page = render(ins, fetched, tok, max_tokens=max_tokens)
    return _write_atomic(Path(out), page)


# ----------------------------------------------------------------------------------------------
# which responses, which boundaries


def _primary(ins: Inspection) -> OutputSet | None:
    """The set whose advantages colour the tokens: the first segmental one, else the first."""
    for s in ins.sets:
        if s.segmental:
            return s
    return ins.sets[0] if ins.sets else None


@dataclass(frozen=True)
class _Marks:
    """The boundaries the token view marks: `key` names them in Response.boundaries (a set's
    advantages column, or "" for the logprob rule at `threshold`)."""

    label: str
    key: str
    segments: Segments
    threshold: float | None = None


def _boundary_source(ins: Inspection) -> _Marks | None:
    """The coloured set's own boundaries, else the logprob rule at the threshold nearest the
    paper's 0.2, else none."""
    s = _primary(ins)
    if s is not None and s.segments is not None and s.segmental:
        return _Marks("boundaries" + s.suffix, s.name, s.segments)
    if ins.thresholds:
        t = min(ins.thresholds, key=lambda t: (abs(math.log(t.threshold / 0.2)), t.threshold))
        return _Marks(f"logprobs < log {t.threshold:g}", "", t.segments, t.threshold)
    return None


def pick_responses(ins: Inspection, n: int, row_boundaries: np.ndarray | None = None
                   ) -> list[tuple[int, str]]:
    """Up to `n` (row, reasons) pairs, deterministic, among the responses with a valid token (with
    any token if none has one): the shortest, the median and the longest, the one with the most
    boundaries (`row_boundaries`, [rows] int), the one with the most masked tokens (first on ties),
    then responses at evenly spaced length ranks. A row picked twice keeps both reasons."""
    lengths = ins.row_lengths
    cand = np.flatnonzero(ins.row_valid > 0)
    if cand.size == 0:
        cand = np.flatnonzero(lengths > 0)
    if cand.size == 0 or n <= 0:
        return []
    order = cand[np.argsort(lengths[cand], kind="stable")]
    picks: dict[int, list[str]] = {}

    def add(i: int, why: str) -> None:
        if int(i) in picks:
            picks[int(i)].append(why)
        elif len(picks) < n:
            picks[int(i)] = [why]

    add(order[0], "shortest")
    add(order[(order.size - 1) // 2], "median length")
    add(order[-1], "longest")
    if row_boundaries is not None and row_boundaries.size and row_boundaries[cand].max() > 0:
        add(cand[int(np.argmax(row_boundaries[cand]))], "most boundaries")
    masked = (lengths - ins.row_valid)[cand]
    if masked.max() > 0:
        add(cand[int(np.argmax(masked))], "most masked tokens")
    rest = [i for i in order if int(i) not in picks]
    need = n - len(picks)
    if need > 0 and rest:
        for k in np.unique(np.linspace(0, len(rest) - 1, min(need, len(rest))).round().astype(int)):
            add(rest[k], "by length rank")
    return [(i, ", ".join(why)) for i, why in picks.items()]


def _fetch(path, ins: Inspection, picks: list[tuple[int, str]], batch_size: int,
           threshold: float | None) -> list[Response]:
    """The picked rows' per-token data, in a second streaming pass that stops after the last one."""
    if not picks:
        return []
    names = set(ins.columns)
    cols = ["response_ids"] + [c for c in ("response_mask", "logprobs", "values") if c in names]
    for s in ins.sets:
        cols.append(s.name)
        if "boundaries" + s.suffix in names:
            cols.append("boundaries" + s.suffix)
    wanted = dict(picks)
    found: dict[int, Response] = {}
    first = 0
    for batch in tj.iter_batches(path, batch_size=batch_size, columns=cols):
        for row in sorted(r for r in wanted if first <= r < first + batch.num_rows):
            t = tj.to_ragged(batch.slice(row - first, 1), cols).tokens
            valid = (np.asarray(t["response_mask"]) != 0) if "response_mask" in t else np.ones(
                t["response_ids"].shape[0], dtype=bool)
            lp = None if "logprobs" not in t else np.asarray(t["logprobs"], dtype=np.float64)
            bnd = {s.name: (np.asarray(t["boundaries" + s.suffix]) != 0) & valid
                   for s in ins.sets if "boundaries" + s.suffix in t}
            if threshold is not None and lp is not None:  # no set has boundaries: the logprob rule's
                bnd[""] = valid & (lp < math.log(threshold))
            found[row] = Response(row, wanted[row], np.asarray(t["response_ids"]), valid, lp,
                                  None if "values" not in t else np.asarray(t["values"], dtype=np.float64),
                                  {s.name: np.asarray(t[s.name], dtype=np.float64) for s in ins.sets}, bnd)
        first += batch.num_rows
        if len(found) == len(wanted):
            break
    return [found[r] for r, _ in picks if r in found]


# ----------------------------------------------------------------------------------------------
# tokens


def _load_tokenizer(tokenizer: Any) -> Any:
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


def token_texts(ids: np.ndarray, tokenizer: Any = None) -> list[str]:
    """The display text of each token: its id, or the tokenizer's decoding of that token alone
    (special tokens kept, no clean-up, so every token shows what it adds)."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode([[i] for i in ids], **kw))
    return [tokenizer.decode([i], **kw) for i in ids]


def _visible(text: str) -> str:
    """Token text made visible in a pre-wrap block: a newline shows as a return mark before the line
    break, an empty decoding as a placeholder."""
    if text == "":
        return "\u2205"
    return text.replace("\r", "\u240d").replace("\n", "\u21b5\n")


def _palette() -> list[tuple[str, str]]:
    """(background, text colour) per colour step, from the most negative to the most positive."""
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    out = []
    for k in range(2 * _HALF + 1):
        r, g, b, _ = cmap(0.1 + 0.8 * k / (2 * _HALF))  # the ends of RdBu are nearly black: kept out
        lum = 0.299 * r + 0.587 * g + 0.114 * b
        out.append((f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}",
                    "#fff" if lum < 0.5 else "#111"))
    return out


def _palette_css() -> str:
    return "".join(f".tokens .c{k}{{background:{bg};color:{fg}}}\n" for k, (bg, fg) in enumerate(_palette()))


def _scale(s: OutputSet | None) -> float:
    """The advantage at which the colour saturates: the larger of |p01|, |p99| of the set."""
    if s is None:
        return 1.0
    a = s.advantages
    for x in (max(abs(a.p01), abs(a.p99)), max(abs(a.min), abs(a.max))):
        if math.isfinite(x) and x > 0:
            return float(f"{x:.2g}")  # a round number for the legend
    return 1.0


def _step(x: float, scale: float) -> int:
    if not math.isfinite(x):
        return _HALF
    return int(round(max(-1.0, min(1.0, x / scale)) * _HALF)) + _HALF


def _token_view(resp: Response, texts: list[str], colour_set: str | None, boundary_key: str | None,
                set_names: list[str], scale: float, max_tokens: int, decoded: bool) -> str:
    L = resp.ids.shape[0]
    if L > max_tokens:
        tail = max_tokens // 3
        shown = list(range(max_tokens - tail)) + [-1] + list(range(L - tail, L))
    else:
        shown = list(range(L))
    bnd = resp.boundaries.get(boundary_key) if boundary_key is not None else None
    parts = []
    sep = "" if decoded else " "
    for t in shown:
        if t < 0:
            parts.append(f'<span class="gap">\u2026 {L - max_tokens:,} tokens not shown \u2026</span>')
            continue
        tip = [f"t={t}  id={int(resp.ids[t])}" + ("" if resp.valid[t] else "  (masked)")]
        if resp.logprobs is not None:
            tip.append(f"logprob {resp.logprobs[t]:.4g}")
        if resp.values is not None:
            tip.append(f"value {resp.values[t]:.4g}")
        for name in set_names:
            mark = " |" if name in resp.boundaries and resp.boundaries[name][t] else ""
            tip.append(f"{name} {resp.advantages[name][t]:.4g}{mark}")
        if not resp.valid[t]:
            cls = "m"
        elif colour_set is not None:
            cls = f"c{_step(float(resp.advantages[colour_set][t]), scale)}"
        else:
            cls = "n"
        if bnd is not None and bnd[t]:
            cls += " b"
        parts.append(f'<span class="{cls}" title="{html.escape(chr(10).join(tip))}">'
                     f"{html.escape(_visible(texts[t]))}</span>")
    return sep.join(parts)


# ----------------------------------------------------------------------------------------------
# plots


def _figure(w: float, h: float):
    # the Agg canvas, explicitly, and no pyplot: its global state (and backend) stay the caller's
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_lengths(ins: Inspection) -> str:
    fig = _figure(11, 3.0)
    ax = fig.add_subplot()
    lo, hi = int(ins.row_valid.min()), int(ins.row_lengths.max())
    bins = np.linspace(lo, hi + 1, min(41, hi - lo + 2))
    ax.hist(ins.row_lengths, bins=bins, histtype="stepfilled", alpha=0.35, color="#1f77b4",
            label="all tokens")
    ax.hist(ins.row_valid, bins=bins, histtype="step", lw=1.5, color="#d62728", label="valid tokens (mask 1)")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.set_title(f"Response lengths ({ins.rows:,} responses)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


def _ccdf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths x = 1..max, share of segments of length >= x) of a histogram counts[k] (k = length)."""
    total = counts.sum()
    at_least = total - np.concatenate([[0], np.cumsum(counts)])[1:-1]  # segments with length >= x
    return np.arange(1, counts.size), at_least / total


def _plot_segments(ins: Inspection) -> str | None:
    from matplotlib import colormaps

    series = [(f"p = {t.threshold:g}: {100 * t.segments.fraction:.1f}% boundaries, "
               f"mean {t.segments.lengths.mean:.3g}" + (" (recorded)" if t.recorded_by else ""), t.segments)
              for t in ins.thresholds]
    sets = [(f"{s.name}: {100 * s.segments.fraction:.1f}% boundaries, mean {s.segments.lengths.mean:.3g}",
             s.segments) for s in ins.sets if s.segmental and s.segments is not None]
    panels = [("logprob rule: a boundary where logprob < log p", series, "viridis"),
              ("output sets: their boundaries columns", sets, None)]
    panels = [(title, [x for x in ss if x[1].segments], cmap) for title, ss, cmap in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = _figure(11, 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True, sharex=True)[0]
    for ax, (title, ss, cmap) in zip(axes, panels):
        for i, (label, sg) in enumerate(ss):
            colour = (colormaps[cmap](0.85 * i / max(len(ss) - 1, 1)) if cmap
                      else _SET_COLOURS[i % len(_SET_COLOURS)])
            x, y = _ccdf(sg.counts)
            ax.step(x, y, where="post", lw=1.8, color=colour, label=label)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("segment length L (valid tokens), log scale")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    axes[0].set_ylabel("share of segments with length ≥ L")
    fig.suptitle("Segment lengths")
    return _png(fig)


def _plot_advantages(ins: Inspection) -> str | None:
    sets = [s for s in ins.sets if s.sample.size]
    if not sets:
        return None
    cols = min(len(sets), 3)
    rows = math.ceil(len(sets) / cols)
    fig = _figure(11, 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()
    lo = min(float(s.sample.min()) for s in sets)
    hi = max(float(s.sample.max()) for s in sets)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 81)
    for i, (ax, s) in enumerate(zip(axes, sets)):
        a = s.advantages
        ax.hist(s.sample, bins=edges, color=_SET_COLOURS[i % len(_SET_COLOURS)], alpha=0.8)
        ax.axvline(0, color="#555", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{s.name} ({s.estimator})", fontsize=10)
        ax.text(0.02, 0.95, f"mean {a.mean:.3g}\nstd {a.std:.3g}\np01 {a.p01:.3g}  p99 {a.p99:.3g}",
                transform=ax.transAxes, va="top", fontsize=8, family="monospace")
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("advantage")
    for ax in axes[len(sets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("tokens (log)")
    sampled = any(not s.advantages.exact for s in sets)
    fig.suptitle("Advantages over valid tokens"
                 + (f" (uniform sample of up to {len(sets[0].sample):,} tokens per set)" if sampled else ""))
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# the page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       background: #fafafa; color: #222; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 20px; margin: 8px 0 2px; word-break: break-all; }
h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 13px; margin: 16px 0 4px; }
.sub { color: #666; font-size: 13px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; font-weight: 600; }
td.l, th.l { text-align: left; }
td.p { text-align: left; white-space: normal; color: #555; max-width: 380px; }
img { max-width: 100%; display: block; margin: 8px 0; background: #fff; border: 1px solid #e4e4e4; }
.note { color: #666; font-size: 12px; margin: 4px 0; }
.legend { display: flex; align-items: center; gap: 18px; flex-wrap: wrap; font-size: 12px;
          margin: 6px 0 10px; }
.bar { display: flex; }
.bar span { width: 18px; height: 14px; display: inline-block; }
.scale { display: flex; justify-content: space-between; font-size: 11px; color: #555; }
.tokens { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px;
          line-height: 1.75; white-space: pre-wrap; overflow-wrap: anywhere; background: #fff;
          border: 1px solid #ddd; padding: 8px 10px; max-height: 360px; overflow-y: auto; }
.tokens span { border-radius: 2px; }
.tokens .b { border-left: 3px solid #111; padding-left: 1px; }
.tokens .m { background: #e6e6e6; color: #9a9a9a; }
.tokens .n { background: #fff; }
.tokens .gap { background: #fff3c4; color: #7a5b00; font-style: italic; padding: 0 6px; }
.demo { font-family: ui-monospace, monospace; padding: 1px 5px; border: 1px solid #ccc; }
details pre { font-size: 11px; background: #fff; border: 1px solid #ddd; padding: 8px; overflow-x: auto; }
"""


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "\u2013"
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list[Any]], left: int = 1, param_col: int | None = None) -> str:
    """An HTML table; the first `left` columns left-aligned; cells are escaped."""
    def cell(tag, i, v):
        if i == param_col:
            cls = ' class="p"' if tag == "td" else ' class="l"'
        else:
            cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(v if isinstance(v, str) else _fmt(v))}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float) -> str:
    return "\u2013" if not math.isfinite(x) else f"{100 * x:.2f}%"


def render(ins: Inspection, picked: list[Response], tokenizer: Any = None, *, max_tokens: int = 1500) -> str:
    """The report page as a string (see `write_report`): `picked` from `_fetch`, `tokenizer` loaded."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sae report: "
             f"{e(os.path.basename(ins.path))}</title><style>{_CSS}{_palette_css()}</style></head>"
             "<body><main>"]
    meta = f"trajectory spec {ins.spec_version}"
    if not ins.has_metadata:
        meta += " (no sae_rl metadata: assumed)"
    if ins.producer:
        meta += f" \u00b7 written by {ins.producer}"
    parts.append(f"<h1>{e(ins.path)}</h1><div class=\"sub\">{e(meta)}</div>")

    # overview
    share = f" ({100 * ins.valid_tokens / ins.tokens:.1f}%)" if ins.tokens else ""
    parts.append("<h2>Overview</h2>")
    parts.append(_table(["", "count"], [
        ["responses (rows)", ins.rows], ["empty responses", ins.empty_rows],
        ["responses without a valid token", ins.rows_without_valid], ["tokens", ins.tokens],
        ["valid tokens (response_mask 1)", f"{ins.valid_tokens:,}{share}"]]))
    parts.append(_table(["response length", "min", "mean", "p50", "p90", "max"], [
        [label, s.min, s.mean, s.p50, s.p90, s.max]
        for label, s in (("tokens", ins.lengths), ("valid tokens", ins.valid_lengths))]))
    if ins.rows:
        parts.append(f'<img alt="response lengths" src="{_plot_lengths(ins)}">')

    # output sets
    parts.append("<h2>Output sets and advantages</h2>")
    if not ins.sets:
        parts.append('<p class="note">No output set: the file has no advantages column.</p>')
    else:
        parts.append(_table(
            ["set", "estimator", "parameters", "mean", "std", "min", "p01", "p50", "p99", "max",
             "returns mean"],
            [[s.name, s.estimator, describe_params(s.params) or "(none recorded)", s.advantages.mean,
              s.advantages.std, s.advantages.min, s.advantages.p01, s.advantages.p50, s.advantages.p99,
              s.advantages.max, s.returns_mean] for s in ins.sets], left=2, param_col=2))
        parts.append('<p class="note">Statistics over valid tokens'
                     + ("; p01/p50/p99 from a uniform sample" if any(not s.advantages.exact for s in ins.sets)
                        else "") + ".</p>")
        if ins.correlations:
            names = [s.name for s in ins.sets]
            r = {(c.a, c.b): c.r for c in ins.correlations} | {(c.b, c.a): c.r for c in ins.correlations}
            parts.append("<h3>Pearson correlations of advantages (valid tokens)</h3>")
            parts.append(_table([""] + names,
                                [[a] + [1.0 if a == b else r[(a, b)] for b in names] for a in names]))
        img = _plot_advantages(ins)
        if img:
            parts.append(f'<img alt="advantage distributions" src="{img}">')

    # segments
    parts.append("<h2>Boundaries and segments</h2>")
    rows = [["boundaries" + s.suffix, s.estimator, s.segments] for s in ins.sets if s.segments is not None]
    rows += [[f"logprobs < log {t.threshold:g}",
              "recorded by " + ", ".join(t.recorded_by) if t.recorded_by else "", t.segments]
             for t in ins.thresholds]
    if rows:
        parts.append(_table(
            ["boundaries", "", "boundary share", "boundaries", "segments", "mean", "p50", "p90", "max"],
            [[a, b, _pct(sg.fraction), sg.boundaries, sg.segments, sg.lengths.mean, sg.lengths.p50,
              sg.lengths.p90, sg.lengths.max] for a, b, sg in rows], left=2))
        parts.append('<p class="note">Share of valid tokens that are boundaries; segment lengths in valid '
                     "tokens (a segment runs from a boundary, or a response's first valid token, to the next "
                     "boundary). A set without boundaries has one segment per response.</p>")
    if not ins.has_logprobs:
        parts.append('<p class="note">No logprobs column: no logprob-rule boundaries.</p>')
    img = _plot_segments(ins)
    if img:
        parts.append(f'<img alt="segment lengths" src="{img}">')

    # non-finite
    if ins.nonfinite:
        parts.append("<h2>Non-finite values</h2>")
        parts.append(_table(["column", "level", "NaN", "inf", "NaN on valid tokens", "inf on valid tokens"],
                            [[n.column, n.level, n.nan, n.inf, n.nan_valid, n.inf_valid]
                             for n in ins.nonfinite],
                            left=2))

    parts.append(_tokens_section(ins, picked, tokenizer, _boundary_source(ins), max_tokens))
    parts.append(f"<h2>Text summary</h2><details><summary>as <code>sae inspect</code> prints it</summary>"
                 f"<pre>{e(ins.format())}</pre></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _tokens_section(ins: Inspection, picked: list[Response], tokenizer: Any, marks: _Marks | None,
                    max_tokens: int) -> str:
    e = html.escape
    out = ["<h2>Responses, token by token</h2>"]
    if not picked:
        out.append('<p class="note">No response with a token.</p>')
        return "".join(out)
    colour = _primary(ins)
    scale = _scale(colour)
    palette = _palette()
    swatches = "".join(f'<span style="background:{bg}"></span>' for bg, _ in palette)
    what = (f"advantage in <b>{e(colour.name)}</b> ({e(colour.estimator)})" if colour is not None
            else "no advantages column: tokens are not coloured")
    legend = [f"<div>{what}</div>"]
    if colour is not None:
        legend.append(f'<div><div class="bar">{swatches}</div><div class="scale">'
                      f"<span>\u2264 \u2212{scale:g}</span><span>0</span>"
                      f"<span>\u2265 +{scale:g}</span></div></div>")
    if marks is not None:
        legend.append(f'<div><span class="tokens" style="padding:0;border:0;background:none">'
                      f'<span class="n b">tok</span></span> boundary ({e(marks.label)})</div>')
    legend.append('<div><span class="tokens" style="padding:0;border:0;background:none">'
                  '<span class="m">tok</span></span> masked (response_mask 0)</div>')
    legend.append(f"<div>tokens shown as {'decoded text' if tokenizer is not None else 'ids'}; "
                  "hover a token for t, id, logprob, value and every set's advantage</div>")
    out.append(f'<div class="legend">{"".join(legend)}</div>')
    key = None if marks is None else marks.key
    names = [s.name for s in ins.sets]
    for resp in picked:
        texts = token_texts(resp.ids, tokenizer)
        nb = int(resp.boundaries[key].sum()) if key is not None and key in resp.boundaries else None
        head = (f"row {resp.row} \u00b7 {resp.why} \u00b7 {resp.ids.shape[0]:,} tokens, "
                f"{int(resp.valid.sum()):,} valid" + (f", {nb:,} boundaries" if nb is not None else ""))
        out.append(f"<h3>{e(head)}</h3>")
        out.append(f'<div class="tokens" data-row="{resp.row}">'
                   + _token_view(resp, texts, None if colour is None else colour.name, key, names, scale,
                                 max_tokens, tokenizer is not None) + "</div>")
    return "".join(out)


def _write_atomic(out: Path, text: str) -> Path:
    """Write `text` to `out` under a temporary name in its directory, then rename: `out` is the
    whole page or what it was before."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "x" (not mkstemp, whose 0600 mode the rename would keep)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


__all__ = ["Response", "pick_responses", "render", "token_texts", "write_report"]
