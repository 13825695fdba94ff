"""The report's matplotlib figures, each returned as a PNG data URI (no file, no pyplot state)."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from ..summary import Inspection

_SET_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")  # tab10


def _figure(w: float, h: float):
    # the Agg canvas, explicitly, and no pyplot: its global state (and backend) stay the caller's
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """Text from the file (column and estimator names) as matplotlib shows it literally: an
    unescaped `$` would start mathtext, and a name such as `advantages_$x^$` would stop the
    report inside matplotlib's parser (an escaped one, `\\$`, shows as `$`)."""
    return text.replace("$", r"\$")


def _png(fig, tight: bool = False) -> str:
    """The figure as a PNG data URI; `tight` crops it to everything drawn (legends outside the axes
    included), with a small margin."""
    buf = io.BytesIO()
    kw = {"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}
    fig.savefig(buf, format="png", metadata={"Software": None}, **kw)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_lengths(ins: Inspection) -> str:
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


def plot_segments(ins: Inspection) -> str | None:
    """`segments_figure` as a PNG data URI cropped to its content (legends included); None without
    segments."""
    fig = segments_figure(ins)
    return None if fig is None else _png(fig, tight=True)


def segments_figure(ins: Inspection):
    """The share of segments at least L tokens long (a CCDF over L, log scale), one panel for the
    logprob rule at each threshold and one for the output sets' boundaries columns; None when
    there is no segment (a matplotlib Figure on the Agg canvas otherwise). Colours from the qualitative `tab10` map (distinct per line); each panel's
    legend is below it, one entry a line, and the PNG is cropped to its content (nothing clipped)."""
    from matplotlib import colormaps

    series = [(f"p = {t.threshold:g}: {100 * t.segments.fraction:.1f}% boundaries, "
               f"mean {t.segments.lengths.mean:.3g}" + (" (recorded)" if t.recorded_by else ""), t.segments)
              for t in ins.thresholds]
    sets = [(_plain(f"{s.name}: {100 * s.segments.fraction:.1f}% boundaries, "
                    f"mean {s.segments.lengths.mean:.3g}"), s.segments)
            for s in ins.sets if s.segmental and s.segments is not None]
    panels = [("logprob rule: a boundary where logprob < log p", series),
              ("output sets: their boundaries columns", sets)]
    panels = [(title, [x for x in ss if x[1].segments]) for title, ss in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    cmap = colormaps["tab10"]
    entries = max(len(ss) for _, ss in panels)
    fig = _figure(5.2 * len(panels) + 0.6, 3.2 + 0.2 * entries)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (title, ss) in zip(axes, panels):
        for i, (label, sg) in enumerate(ss):
            x, y = _ccdf(sg.counts)
            ax.step(x, y, where="post", lw=1.8, color=cmap(i % 10), label=label,
                    ls=("-", "--", ":")[(i // 10) % 3])
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("segment length L (valid tokens), log scale")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
    axes[0].set_ylabel("share of segments with length \u2265 L")
    fig.suptitle("Segment lengths")
    return fig


def plot_advantages(ins: Inspection) -> str | None:
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
        ax.set_title(_plain(f"{s.name} ({s.estimator})"), fontsize=10)
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


# the per-response curves: inline SVG drawn here (no matplotlib: small, crisp at any width, and no
# url() references, which matplotlib's SVG uses for clipping)
_W, _PANEL, _GAP, _LEFT, _RIGHT = 1000, 110, 26, 58, 8
EXACT_COLOUR = "#111111"
VALUES_COLOUR = "#00838f"  # the critic's values: a teal none of the sets uses


def set_colour(i: int) -> str:
    """The colour of output set i (0-based) in the curves and the side-by-side token rows: the
    qualitative tab10 colours, in order."""
    return _SET_COLOURS[i % len(_SET_COLOURS)]


def _fmt_tick(x: float) -> str:
    return f"{x:.3g}"


def _panel(y0: float, title: str, L: int, curves: list[tuple[str, np.ndarray, str]],
           marks: list[tuple[np.ndarray, str]], valid: np.ndarray) -> list[str]:
    """SVG elements of one panel at height y0: `curves` (label, [L] float, colour, drawn over valid
    tokens only, NaN gaps), `marks` ([L] bool boundaries, colour) as vertical lines."""
    e = html.escape
    ys = [c[~np.isnan(c) & valid] for _, c, _ in curves]
    ys = [y[np.isfinite(y)] for y in ys]
    allv = np.concatenate(ys) if ys else np.zeros(0)
    lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    w = _W - _LEFT - _RIGHT

    def X(t):
        return _LEFT + (t + 0.5) * w / max(L, 1)

    def Y(v):
        return y0 + _PANEL - (v - lo) / (hi - lo) * _PANEL

    out = [f'<rect x="{_LEFT}" y="{y0}" width="{w}" height="{_PANEL}" fill="#fff" stroke="#ccc"/>']
    # masked tokens: grey bands
    inv = np.flatnonzero(~valid)
    if inv.size:
        runs = np.split(inv, np.flatnonzero(np.diff(inv) > 1) + 1)
        for r in runs:
            out.append(f'<rect x="{X(r[0] - 0.5):.1f}" y="{y0}" width="{(r.size) * w / max(L, 1):.1f}" '
                       f'height="{_PANEL}" fill="#e8e8e8"/>')
    if lo < 0 < hi:
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{Y(0):.1f}" y2="{Y(0):.1f}" stroke="#999" '
                   'stroke-dasharray="3 3"/>')
    for k, (b, colour) in enumerate(marks):
        # each set's boundaries: a line through the panel, and a tick in its own lane at the top
        for t in np.flatnonzero(b):
            out.append(f'<line x1="{X(t - 0.5):.1f}" x2="{X(t - 0.5):.1f}" y1="{y0}" y2="{y0 + _PANEL}" '
                       f'stroke="{colour}" stroke-opacity="0.35"/>')
            out.append(f'<line x1="{X(t - 0.5):.1f}" x2="{X(t - 0.5):.1f}" y1="{y0 + 1 + 5 * k}" '
                       f'y2="{y0 + 5 + 5 * k}" stroke="{colour}" stroke-width="2"/>')
    for label, c, colour in curves:
        c = np.where(valid, c, np.nan)
        ok = np.isfinite(c)
        segs = np.split(np.flatnonzero(ok), np.flatnonzero(np.diff(np.flatnonzero(ok)) > 1) + 1)
        for seg in segs:
            if seg.size == 0:
                continue
            pts = " ".join(f"{X(t):.1f},{Y(c[t]):.1f}" for t in seg)
            if seg.size == 1:
                out.append(f'<circle cx="{X(seg[0]):.1f}" cy="{Y(c[seg[0]]):.1f}" r="1.5" fill="{colour}">'
                           f"<title>{e(label)}</title></circle>")
            else:
                out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.3">'
                           f"<title>{e(label)}</title></polyline>")
    out.append(f'<text x="{_LEFT - 4}" y="{y0 + 9}" text-anchor="end">{_fmt_tick(hi)}</text>')
    out.append(f'<text x="{_LEFT - 4}" y="{y0 + _PANEL}" text-anchor="end">{_fmt_tick(lo)}</text>')
    out.append(f'<text x="{_LEFT - 4}" y="{y0 + _PANEL / 2 + 4}" text-anchor="end" '
               f'font-weight="bold">{e(title)}</text>')
    return out


def svg_curves(L: int, valid: np.ndarray, values: list[tuple[str, np.ndarray, str]],
               advantages: list[tuple[str, np.ndarray, str]], boundaries: list[tuple[np.ndarray, str]]
               ) -> str:
    """One response's V(t) and A(t) as an inline SVG (scales to its container's width).

    L: tokens; valid: [L] bool (masked tokens shaded grey, not drawn); values and advantages:
    (label, [L] float, colour) curves for the V(t) panel (e.g. the critic's and the exact values;
    omitted when empty) and the A(t) panel (each set, the exact advantages); boundaries: ([L] bool,
    colour) per segmental set, drawn as vertical lines before the boundary token in both panels and
    as a tick in the set's own lane at the top of each panel. Returns the `<svg>` element's text.
    """
    panels = [("V(t)", values), ("A(t)", advantages)]
    panels = [(t, c) for t, c in panels if c]
    height = len(panels) * (_PANEL + _GAP) + 4
    out = [f'<svg class="curves" viewBox="0 0 {_W} {height}"  role="img" '
           f'font-size="13" font-family="sans-serif">']
    valid = np.asarray(valid, dtype=bool)
    for k, (title, curves) in enumerate(panels):
        y0 = 4 + k * (_PANEL + _GAP)
        out += _panel(y0, title, L, curves, boundaries, valid)
    ylab = 4 + len(panels) * (_PANEL + _GAP) - 8
    out.append(f'<text x="{_LEFT}" y="{ylab}">t = 0</text>')
    out.append(f'<text x="{_W - _RIGHT}" y="{ylab}" text-anchor="end">t = {L - 1} (token index)</text>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["EXACT_COLOUR", "VALUES_COLOUR", "plot_advantages", "plot_lengths", "plot_segments", "segments_figure", "set_colour",
           "svg_curves"]
