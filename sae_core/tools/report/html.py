"""The report page: HTML tables, the token view and its colour scale, inline CSS.

Self-contained: inline CSS, plots as base64 PNG data URIs, no script, no external font, link or
image, so the page opens offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..summary import Inspection, OutputSet
from ..summary_format import NONFINITE_NOTE, set_params
from .plots import (EXACT_COLOUR, VALUES_COLOUR, plot_advantages, plot_lengths, plot_segments, set_colour,
                    svg_curves)
from .selection import Marks, Response, boundary_marks, primary_set


@dataclass(frozen=True)
class Exact:
    """The exact advantages a lab file carries (column `column`, e.g. `true_advantages`): each
    set's Pearson r, mean squared error and bias (mean of set - exact) over valid tokens
    ({set name: (r, mse, bias, tokens)}), and for the rows the
    token view shows {row: [L] float64} of the exact advantages and of the exact values
    (`values_column`, empty when the file lacks it)."""

    column: str
    correlations: dict[str, tuple[float, int]]
    advantages: dict[int, np.ndarray]
    values_column: str | None = None
    values: dict[int, np.ndarray] = field(default_factory=dict)

# The diverging colour scale of the token view: 2 * _HALF + 1 steps, white-ish at 0.
_HALF = 8
_CMAP = "RdBu"  # red: negative advantage, blue: positive


def token_texts(ids: np.ndarray, tokenizer: Any = None) -> list[str]:
    """The display text of each token: its id, or the tokenizer's decoding of that token alone
    (special tokens kept, no clean-up, so every token shows what it adds).

    An id the tokenizer cannot decode (negative, past its vocabulary, or one its decode refuses:
    fast tokenizers raise OverflowError for -1) shows as `undecodable(id)` (see `_undecodable`).
    """
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    try:
        size = len(tokenizer)  # transformers: the vocabulary with the added tokens
    except TypeError:  # an object with decode() only
        size = None
    ok = [i >= 0 and (size is None or i < size) for i in ids]
    good = [i for i, fine in zip(ids, ok) if fine]
    texts = None
    if hasattr(tokenizer, "batch_decode"):
        texts = _decoded(lambda: tokenizer.batch_decode([[i] for i in good], **kw))
        if not isinstance(texts, list) or len(texts) != len(good):
            texts = None
    if texts is None:  # one at a time: one bad id costs only its own text
        texts = [_decoded(lambda i=i: tokenizer.decode([i], **kw)) for i in good]
    decoded = iter(texts)
    out = []
    for i, fine in zip(ids, ok):
        text = next(decoded) if fine else None
        out.append(text if isinstance(text, str) else _undecodable(i))
    return out


def _decoded(call):
    """`call()`, or None when the tokenizer fails on its input. Any exception: tokenizers raise
    OverflowError, IndexError, KeyError, TypeError or, from Rust, pyo3's PanicException, which
    derives from BaseException; only an interrupt or an exit goes through."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 -- see the docstring
        return None


def _undecodable(token_id: int | str) -> str:
    """The placeholder shown for a token id the tokenizer cannot decode."""
    return f"\u27e8{token_id}?\u27e9"  # ⟨-1?⟩: brackets no tokenizer text is likely to hold


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
    return "".join(f".tokens .c{k}, .stack .c{k}{{background:{bg};color:{fg}}}\n"
                   for k, (bg, fg) in enumerate(_palette())) + ".stack .m{background:#e6e6e6;color:#9a9a9a}\n"


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


def _shown(L: int, max_tokens: int) -> list[int]:
    """The token indices shown of a response of L tokens: all, or the first two thirds and the last
    third of `max_tokens`, with -1 where the gap is."""
    if L > max_tokens:
        tail = max_tokens // 3
        return list(range(max_tokens - tail)) + [-1] + list(range(L - tail, L))
    return list(range(L))


def _side_by_side(resp: Response, texts: list[str], colour_set: str | None, rows: list[tuple[str, str]],
                  exact: np.ndarray | None, scale: float, max_tokens: int) -> str:
    """Every set under the same tokens: per token a column of the token's text (coloured by
    `colour_set`) and one strip per set in `rows` ((label, set name), coloured by that set's
    advantage, its boundaries as a black bar on the strip's left) and, with `exact` ([L]), a strip
    of the exact advantages. Wraps with the page; tags b/i so that the classic view's markup stays
    its own."""
    L = resp.ids.shape[0]
    key = ['<b class="tk key"><b class="tx">token</b>']
    key += [f"<i>{html.escape(label)}</i>" for label, _ in rows]
    if exact is not None:
        key.append("<i>exact</i>")
    parts = ["".join(key) + "</b>"]
    for t in _shown(L, max_tokens):
        if t < 0:
            parts.append(f'<b class="tk gap">\u2026 {L - max_tokens:,} \u2026</b>')
            continue
        ok = bool(resp.valid[t])

        def cls(x: float) -> str:
            return f"c{_step(float(x), scale)}" if ok else "m"
        head = cls(resp.advantages[colour_set][t]) if colour_set is not None else ("n" if ok else "m")
        cells = [f'<b class="tx {head}">{html.escape(_visible(texts[t]))}</b>']
        for _, name in rows:
            b = " bd" if name in resp.boundaries and resp.boundaries[name][t] else ""
            cells.append(f'<i class="{cls(resp.advantages[name][t])}{b}"></i>')
        if exact is not None:
            cells.append(f'<i class="{cls(exact[t])}"></i>')
        tip = f"t={t}" + "".join(f"  {label} {resp.advantages[name][t]:.3g}" for label, name in rows)
        if exact is not None:
            tip += f"  exact {exact[t]:.3g}"
        parts.append(f'<b class="tk" title="{html.escape(tip)}">' + "".join(cells) + "</b>")
    return f'<div class="stack" data-row="{resp.row}">' + "".join(parts) + "</div>"


def _curves(resp: Response, ins: Inspection, exact: Exact | None) -> str:
    """The response's V(t) and A(t) curves (`svg_curves`) with an HTML legend."""
    e = html.escape
    values, advs, bnds, legend = [], [], [], []
    if resp.values is not None:
        values.append(("values (critic)", resp.values, VALUES_COLOUR))
        legend.append((VALUES_COLOUR, "V: values (critic)"))
    if exact is not None and resp.row in exact.values:
        values.append((f"{exact.values_column} (exact)", exact.values[resp.row], EXACT_COLOUR))
        legend.append((EXACT_COLOUR, f"V: {exact.values_column} (exact)"))
    for i, s in enumerate(ins.sets):
        advs.append((s.name, resp.advantages[s.name], set_colour(i)))
        legend.append((set_colour(i), f"A: {s.name} ({s.estimator})"
                       + (", boundaries as vertical lines" if s.name in resp.boundaries else "")))
        if s.name in resp.boundaries:
            bnds.append((resp.boundaries[s.name], set_colour(i)))
    if exact is not None and resp.row in exact.advantages:
        advs.append((f"{exact.column} (exact)", exact.advantages[resp.row], EXACT_COLOUR))
        legend.append((EXACT_COLOUR, f"A: {exact.column} (exact)"))
    if "" in resp.boundaries and not bnds:
        bnds.append((resp.boundaries[""], "#555555"))
        legend.append(("#555555", "boundaries: logprob rule"))
    if not values and not advs:
        return ""
    keys = "".join(f'<span><span class="sw" style="background:{c}"></span>{e(t)}</span>' for c, t in legend)
    return (f'<div class="curvekey">{keys}</div>'
            + svg_curves(resp.ids.shape[0], resp.valid, values, advs, bnds))


def _token_view(resp: Response, texts: list[str], colour_set: str | None, boundary_key: str | None,
                set_names: list[str], scale: float, max_tokens: int, decoded: bool) -> str:
    L = resp.ids.shape[0]
    shown = _shown(L, max_tokens)
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
.tw { max-width: 100%; overflow-x: auto; }
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
.curvekey { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 11px; color: #444; margin: 4px 0; }
.sw { display: inline-block; width: 14px; height: 3px; margin: 0 4px 3px 0; vertical-align: middle; }
svg.curves { display: block; width: 100%; height: auto; background: #fff; border: 1px solid #e4e4e4; }
.stack { display: flex; flex-wrap: wrap; row-gap: 6px; background: #fff; border: 1px solid #ddd;
         padding: 6px 8px; margin: 6px 0; max-height: 300px; overflow-y: auto; font-size: 11px;
         font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.stack .tk { display: inline-flex; flex-direction: column; font-weight: normal; min-width: 8px; }
.stack .tx { padding: 1px 2px; white-space: pre; font-weight: normal; }
.stack i { display: block; height: 9px; border-top: 1px solid #fff; }
.stack .key i { height: 9px; font-size: 9px; line-height: 9px; font-style: normal; color: #555;
                padding-right: 4px; border: 0; overflow: hidden; }
.stack .key .tx { color: #555; padding-right: 4px; }
.stack i.bd { box-shadow: inset 3px 0 #111; }
.stack .gap { background: #fff3c4; color: #7a5b00; padding: 1px 6px; }
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
    # in a box that scrolls sideways: a wide table never widens the page on a narrow window
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _pct(x: float) -> str:
    return "\u2013" if not math.isfinite(x) else f"{100 * x:.2f}%"


def render(ins: Inspection, picked: list[Response], tokenizer: Any = None, *, max_tokens: int = 1500,
           color_by: str | None = None, exact: Exact | None = None) -> str:
    """The report page as a string (see `write_report`): `picked` from `fetch_responses`,
    `tokenizer` loaded (`load_tokenizer`) or None; `color_by`: the name of the set (its advantages
    column) whose advantages colour the tokens (default `primary_set`); `exact`: the file's exact
    advantages (`Exact`), shown as curves and strips and scored, or None."""
    colour = next((s for s in ins.sets if s.name == color_by), None) or primary_set(ins)
    own = colour is not None and colour.segmental and colour.segments is not None
    marks = Marks("boundaries" + colour.suffix, colour.name, colour.segments) if own else boundary_marks(ins)
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
        parts.append(f'<img alt="response lengths" src="{plot_lengths(ins)}">')

    # output sets
    parts.append("<h2>Output sets and advantages</h2>")
    if not ins.sets:
        parts.append('<p class="note">No output set: the file has no advantages column.</p>')
    else:
        parts.append(_table(
            ["set", "estimator", "parameters", "mean", "std", "min", "p01", "p50", "p99", "max",
             "returns mean"],
            [[s.name, s.estimator, set_params(s) or "(none recorded)", s.advantages.mean,
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
        if exact is not None:
            parts.append(f"<h3>Agreement with the exact advantages ({e(exact.column)}, valid tokens)</h3>")
            none = (math.nan, math.nan, math.nan, 0)
            parts.append(_table(["set", "estimator", "Pearson r with exact", "mse", "bias", "tokens"],
                                [[s.name, s.estimator, *exact.correlations.get(s.name, none)]
                                 for s in ins.sets], left=2))
        img = plot_advantages(ins)
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
    img = plot_segments(ins)
    if img:
        parts.append(f'<img alt="segment lengths" src="{img}">')

    # non-finite
    if ins.nonfinite:
        parts.append("<h2>Non-finite values</h2>")
        parts.append(_table(["column", "level", "NaN", "inf", "NaN on valid tokens", "inf on valid tokens"],
                            [[n.column, n.level, n.nan, n.inf, n.nan_valid, n.inf_valid]
                             for n in ins.nonfinite],
                            left=2))
        note = " ".join(NONFINITE_NOTE.split())
        parts.append(f'<p class="note">{e(note[0].upper() + note[1:])}.</p>')

    parts.append(_tokens_section(ins, picked, tokenizer, marks, max_tokens, colour, exact))
    parts.append(f"<h2>Text summary</h2><details><summary>as <code>sae inspect</code> prints it</summary>"
                 f"<pre>{e(ins.format())}</pre></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _tokens_section(ins: Inspection, picked: list[Response], tokenizer: Any, marks: Marks | None,
                    max_tokens: int, colour: OutputSet | None, exact: Exact | None) -> str:
    e = html.escape
    out = ["<h2>Responses, token by token</h2>"]
    if not picked:
        out.append('<p class="note">No response with a token.</p>')
        return "".join(out)
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
    undecodable = f"{_undecodable('id')}: an id the tokenizer cannot decode; " if tokenizer is not None else ""
    legend.append(f"<div>tokens shown as {'decoded text' if tokenizer is not None else 'ids'}; {undecodable}"
                  "hover a token for t, id, logprob, value and every set's advantage</div>")
    out.append(f'<div class="legend">{"".join(legend)}</div>')
    rows = [(s.name[len("advantages"):].lstrip("_") or s.name, s.name) for s in ins.sets]
    out.append('<p class="note">Per response: its V(t) and A(t) curves (grey bands: masked tokens; vertical '
               "lines: each set's boundaries, with a tick in the set's lane at the top), then the tokens "
               "with one strip per set under each token (" + e(", ".join(f"{a} = {b}" for a, b in rows))
               + (f", exact = {e(exact.column)}" if exact is not None else "")
               + "; same colour scale; a black bar on a strip's left: that set's boundary), then the "
               "tokens with their tooltips.</p>")
    key = None if marks is None else marks.key
    names = [s.name for s in ins.sets]
    cname = None if colour is None else colour.name
    for resp in picked:
        texts = token_texts(resp.ids, tokenizer)
        nb = int(resp.boundaries[key].sum()) if key is not None and key in resp.boundaries else None
        head = (f"row {resp.row} \u00b7 {resp.why} \u00b7 {resp.ids.shape[0]:,} tokens, "
                f"{int(resp.valid.sum()):,} valid" + (f", {nb:,} boundaries" if nb is not None else ""))
        out.append(f"<h3>{e(head)}</h3>")
        out.append(_curves(resp, ins, exact))
        if rows:
            ex = None if exact is None else exact.advantages.get(resp.row)
            out.append(_side_by_side(resp, texts, cname, rows, ex, scale, max_tokens))
        out.append(f'<div class="tokens" data-row="{resp.row}">'
                   + _token_view(resp, texts, cname, key, names, scale, max_tokens, tokenizer is not None)
                   + "</div>")
    return "".join(out)


__all__ = ["Exact", "render", "token_texts"]
