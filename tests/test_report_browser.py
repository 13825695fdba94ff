"""The report in headless Chromium, at two window widths: the page is loaded with a layout check
injected (a copy of the page plus one script; the report itself has none), which writes what it
finds into the DOM; `--dump-dom` brings it back.

Detected as layout errors: a figure (img, svg), table, token view or heading whose box leaves the
page's width (unless inside a box that scrolls sideways, which keeps it reachable), a page wider
than the window (a sideways scroll bar), figures that overlap, an image that failed to load
(naturalWidth 0) or has no size. `test_the_check_fails_on_a_bad_page` proves each check can fail.

Chromium is Debian's `chromium` (`./dev setup` installs it as root where apt-get works). Without it
the browser tests skip, except in CI (`CI` set) and under `./dev test` (SAE_REQUIRE_FRAMEWORKS=1),
where they fail: there they must run. The other tests here check the page's content without a browser.

`python tests/test_report_browser.py FILE` writes the report of FILE (default sae-demo/recomputed.parquet,
from `./dev main`) and its screenshots docs/report-1280.png and docs/report-700.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sae_core import trajectory as tj
from sae_core.tools.report import write_report

WIDTHS = (1280, 700)
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# `./dev test` (SAE_REQUIRE_FRAMEWORKS=1) and CI install chromium: there a missing one fails
REQUIRED = bool(os.environ.get("CI") or os.environ.get("SAE_REQUIRE_FRAMEWORKS"))
needs_browser = pytest.mark.skipif(BROWSER is None and not REQUIRED,
                                   reason="no chromium (./dev setup installs Debian's chromium as root)")

CHECK = r"""
<script>
function layoutCheck() {
  const found = [];
  const W = document.documentElement.clientWidth;
  const name = (el) => el.tagName.toLowerCase() + (el.className && typeof el.className === "string"
                       ? "." + el.className.split(" ")[0] : "") + (el.alt ? "[" + el.alt + "]" : "");
  const scroller = (el) => {  // the nearest ancestor that scrolls sideways, or null
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return p;
    }
    return null;
  };
  if (document.documentElement.scrollWidth > W + 1)
    found.push("page wider than the window: " + document.documentElement.scrollWidth + " > " + W);
  const boxes = document.querySelectorAll("img, svg, figure, table, .tokens, .stack, h1, h2, h3, .legend");
  for (const el of boxes) {
    const box = (scroller(el) || el).getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;  // not displayed (in a closed <details>)
    if (box.left < -1 || box.right > W + 1)
      found.push(name(el) + " outside the page: " + Math.round(box.left) + ".." + Math.round(box.right)
                 + " of " + W);
  }
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) found.push(name(img) + " did not load");
    else if (img.getBoundingClientRect().width < 50) found.push(name(img) + " shown " +
             Math.round(img.getBoundingClientRect().width) + " px wide");
  }
  const figs = Array.from(document.querySelectorAll("img, svg.curves"));
  for (let i = 0; i < figs.length; i++) for (let j = i + 1; j < figs.length; j++) {
    const a = figs[i].getBoundingClientRect(), b = figs[j].getBoundingClientRect();
    const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (w > 1 && h > 1) found.push(name(figs[i]) + " overlaps " + name(figs[j]));
  }
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({width: W, figures: figs.length, images: document.images.length,
                                    errors: found});
  document.body.appendChild(out);
}
window.addEventListener("load", layoutCheck);
</script>
"""


def chromium(args: list[str], profile: Path, width: int, height: int = 2000, timeout: float = 60) -> str:
    """Run headless Chromium once; returns its stdout."""
    if BROWSER is None:
        pytest.fail("chromium is missing (CI or ./dev test): ./dev setup installs it")
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
           "--virtual-time-budget=5000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def layout_errors(page: Path, width: int, tmp: Path) -> dict:
    """The layout check's findings ({width, figures, images, errors}) for `page` at `width`."""
    checked = tmp / f"checked-{width}-{page.stem}.html"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium(["--dump-dom", checked.as_uri()], tmp / f"profile-{width}", width)
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, "the layout check did not run: " + dom[-500:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&gt;", ">").replace("&lt;", "<")
                      .replace("&amp;", "&"))


def small_file(path: Path) -> Path:
    """A lab-like file: 6 responses with logprobs, values, exact advantages and values, gae and sae sets."""
    rng = np.random.default_rng(7)
    lengths = np.array([40, 260, 5, 120, 900, 75])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    tokens = {"response_ids": rng.integers(0, 32000, n), "response_mask": rng.random(n) < 0.95,
              "logprobs": -rng.exponential(0.7, n), "values": rng.normal(0.5, 0.2, n),
              "true_values": rng.normal(0.5, 0.2, n), "true_advantages": rng.normal(0, 0.3, n)}
    t = tj.from_ragged(offsets, tokens, {"trajectory_id": [f"r{i}" for i in range(lengths.size)],
                                         "reward": rng.random(lengths.size)})
    t = tj.compute(t, estimator="gae", suffix="_gae")
    t = tj.compute(t, estimator="sae", suffix="_sae", threshold=0.3)
    return tj.write_table(t, path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    return write_report(small_file(tmp / "lab.parquet"), tmp / "report.html", responses=4, max_tokens=400)


@needs_browser
@pytest.mark.parametrize("width", WIDTHS)
def test_report_lays_out_in_chromium(report, tmp_path, width):
    found = layout_errors(report, width, tmp_path)
    assert found["width"] <= width and found["images"] == 3
    assert found["figures"] == 3 + 4  # the three plots and a V(t)/A(t) figure per response shown
    assert found["errors"] == []


@needs_browser
def test_the_check_fails_on_a_bad_page(report, tmp_path):
    page = report.read_text()
    bad = tmp_path / "bad.html"
    # a 3000 px table, a broken image, and two figures drawn over each other
    bad.write_text(page.replace("<h2>Overview</h2>", '<h2>Overview</h2><table style="width:3000px"><tr><td>x'
                                "</td></tr></table><img alt=\"broken\" src=\"data:image/png;base64,AAAA\">"
                                '<img alt="over" style="position:absolute;top:0;left:0" src="'
                                + re.search(r'src="(data:image/png[^"]+)"', page).group(1) + '">', 1))
    errors = layout_errors(bad, 700, tmp_path)["errors"]
    assert any(e.startswith("page wider than the window") for e in errors), errors
    assert any(e.startswith("table outside the page") for e in errors), errors
    assert "img[broken] did not load" in errors, errors
    assert any("overlaps" in e for e in errors), errors


# ----------------------------------------------------------------------------------------------
# the page's content, without a browser


def test_exact_advantages_are_scored_and_shown(report):
    from sae_core.tools.report import exact_advantages
    from sae_core.tools.summary import inspect_file

    path = report.parent / "lab.parquet"
    ins = inspect_file(path)
    t = tj.read_table(path)
    rag = tj.to_ragged(t, ["true_advantages", "advantages_gae", "advantages_sae", "response_mask"]).tokens
    ok = rag["response_mask"].astype(bool)
    ex = exact_advantages(path, ins, [1, 4], batch_size=2)  # rows across batches
    for name in ("advantages_gae", "advantages_sae"):
        r, mse, bias, n = ex.correlations[name]
        x, y = rag["true_advantages"][ok].astype(np.float64), rag[name][ok].astype(np.float64)
        assert n == ok.sum() and r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
        assert mse == pytest.approx(((y - x) ** 2).mean()) and bias == pytest.approx((y - x).mean())
    offsets = tj.to_ragged(t, ["true_advantages"]).offsets
    assert sorted(ex.advantages) == [1, 4]
    np.testing.assert_array_equal(ex.advantages[4], rag["true_advantages"][offsets[4]:offsets[5]])
    assert ex.values_column == "true_values" and ex.values[1].shape == (260,)
    page = report.read_text()
    assert "Agreement with the exact advantages (true_advantages" in page
    assert f"{ex.correlations['advantages_sae'][0]:.4g}" in page
    # without the column: nothing
    plain = tj.write_table(t.drop_columns(["true_advantages", "true_values"]),
                           report.parent / "plain.parquet")
    assert exact_advantages(plain, inspect_file(plain), [0]) is None


def test_curves_and_side_by_side_views(report):
    page = report.read_text()
    stacks = re.findall(r'<div class="stack" data-row="(\d+)">(.*?)</div>', page, re.S)
    views = re.findall(r'<div class="tokens" data-row="(\d+)">', page)
    assert [r for r, _ in stacks] == views and len(views) == 4
    svgs = re.findall(r'<svg class="curves".*?</svg>', page, re.S)
    assert len(svgs) == 4
    for svg in svgs:  # V and A panels; each set and the exact ones drawn
        assert ">V(t)<" in svg and ">A(t)<" in svg
        for label in ("advantages_gae", "advantages_sae", "true_advantages (exact)", "true_values (exact)"):
            assert f"<title>{label}</title>" in svg, label
    t = tj.read_table(report.parent / "lab.parquet")
    bnd = t.column("boundaries_sae").to_pylist()
    for (row, body), svg in zip(stacks, svgs):
        cols = body.split('<b class="tk" title="t=')[1:]  # one per token shown
        strips = [re.findall(r'<i class="([^"]*)"></i>', c) for c in cols]
        assert len(cols) > 0 and all(len(s) == 3 for s in strips)  # gae, sae, exact under every token
        shown = [int(re.match(r"\d+", c).group()) for c in cols]
        marked = [t_ for t_, s in zip(shown, strips) if "bd" in s[1].split()]
        assert marked == [t_ for t_ in shown if bnd[int(row)][t_]]
        assert not any("bd" in s[0].split() for s in strips)  # gae has no boundary
        # a vertical line per sae boundary in each panel, plus its lane tick
        n = sum(bnd[int(row)])
        assert svg.count('stroke="#ff7f0e" stroke-opacity') == 2 * n


def test_color_by(tmp_path, report):
    from sae_core.tools.report import resolve_color_by
    from sae_core.tools.summary import inspect_file

    path = report.parent / "lab.parquet"
    ins = inspect_file(path)
    assert resolve_color_by(ins, None) is None
    assert {resolve_color_by(ins, k) for k in ("gae", "_gae", "advantages_gae")} == {"advantages_gae"}
    with pytest.raises(ValueError, match="names no output set.*advantages_gae, advantages_sae"):
        resolve_color_by(ins, "vapo")
    with pytest.raises(ValueError, match="color_by must be"):
        write_report(path, tmp_path / "x.html", color_by=3)
    default = report.read_text()
    page = write_report(path, tmp_path / "gae.html", responses=4, max_tokens=400, color_by="gae").read_text()
    assert "advantage in <b>advantages_sae</b>" in default and "advantage in <b>advantages_gae</b>" in page
    # the tokens take gae's colours (not sae's); gae has no boundary: sae's stay marked
    first = re.search(r'<div class="tokens" data-row="\d+">(.*?)</div>', page, re.S).group(1)
    assert first != re.search(r'<div class="tokens" data-row="\d+">(.*?)</div>', default, re.S).group(1)
    assert "boundary (boundaries_sae)" in page


def test_segment_figure_legends_neither_clipped_nor_overlapping(report):
    from matplotlib.colors import to_hex

    from sae_core.tools.report.plots import segments_figure
    from sae_core.tools.summary import inspect_file

    # many thresholds: long legends, which used to run off the figure and into each other
    ins = inspect_file(report.parent / "lab.parquet",
                       thresholds=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9))
    fig = segments_figure(ins)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    axes = fig.axes
    assert len(axes) == 2
    legends = [ax.get_legend().get_window_extent(renderer) for ax in axes]
    saved = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # what bbox_inches="tight" keeps
    for box in legends:  # pixels, both
        assert saved.x0 <= box.x0 and box.x1 <= saved.x1 and saved.y0 <= box.y0 and box.y1 <= saved.y1
    assert not legends[0].overlaps(legends[1])
    for ax in axes:
        assert ax.get_window_extent(renderer).width > 250  # panels not squeezed
        colours = [to_hex(line.get_color()) for line in ax.get_lines()]
        assert len(set(colours)) == len(colours)  # one colour a line
    first = [to_hex(line.get_color()) for line in axes[0].get_lines()]
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in first], dtype=float)
    gaps = [np.abs(rgb[i] - rgb[j]).sum() for i in range(len(rgb)) for j in range(i)]
    assert min(gaps) > 60  # distinguishable: not neighbours on a sequential colormap
    # the PNG: cropped to the content, nothing cut at an edge
    import base64
    import io

    from PIL import Image

    from sae_core.tools.report.plots import plot_segments
    png = base64.b64decode(plot_segments(ins).split(",", 1)[1])
    im = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    ink = np.argwhere(im < 200)
    assert ink.min(axis=0).max() < 20 and (np.array(im.shape) - ink.max(axis=0)).max() < 20
    assert (im[:3] >= 200).all() and (im[-3:] >= 200).all()
    assert (im[:, :3] >= 200).all() and (im[:, -3:] >= 200).all()


def test_progress_on_stderr(report, tmp_path, capsys):
    path = report.parent / "lab.parquet"
    write_report(path, tmp_path / "a.html", progress=True)
    err = capsys.readouterr().err
    assert "report: 4/4 steps" in err and "summary pass over the file" in err and "exact advantages" in err
    write_report(path, tmp_path / "b.html")  # default: no bar
    write_report(path, tmp_path / "c.html", progress=None)  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


POSITIONS = r"""
<script>
window.addEventListener("load", () => {
  const top = (el) => el.getBoundingClientRect().top + window.scrollY;
  const bottom = (el) => el.getBoundingClientRect().bottom + window.scrollY;
  const h2 = Array.from(document.querySelectorAll("h2"));
  const seg = h2.find((h) => h.textContent.startsWith("Boundaries"));
  const segImg = document.querySelector('img[alt="segment lengths"]');
  const resp = document.querySelector("h3 ~ svg.curves, .curvekey");
  const first = document.querySelector(".tokens[data-row]");
  const out = document.createElement("pre");
  out.id = "positions";
  out.textContent = JSON.stringify([[top(seg), bottom(segImg)],
                                    [top(resp.previousElementSibling), bottom(first)]]);
  document.body.appendChild(out);
});
</script>
"""


def screenshots(path: Path, docs: Path) -> list[Path]:
    """Write the report of `path` and a screenshot of it at each width to docs/report-{width}.png:
    the segment-length section, then the first response shown (its curves, the sets side by side
    under its tokens, the classic token view), cut from a full-page screenshot."""
    from PIL import Image

    written = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        page = write_report(path, tmp / "report.html", responses=2, max_tokens=300)
        probe = tmp / "probe.html"
        probe.write_text(page.read_text().replace("</body>", POSITIONS + "</body>"))
        for width in WIDTHS:
            height = 9000
            dom = chromium(["--dump-dom", probe.as_uri()], tmp / f"profile-{width}", width, height)
            spans = json.loads(re.search(r'<pre id="positions">(.*?)</pre>', dom, re.S).group(1))
            shot = tmp / f"{width}.png"
            chromium([f"--screenshot={shot}", page.as_uri()], tmp / f"profile-{width}", width, height, 120)
            im = Image.open(shot).convert("RGB")
            parts = [im.crop((0, max(0, int(a) - 8), width, min(im.height, int(b) + 8))) for a, b in spans]
            joined = Image.new("RGB", (width, sum(p.height for p in parts) + 12), "white")
            y = 0
            for p in parts:
                joined.paste(p, (0, y))
                y += p.height + 12
            out = docs / f"report-{width}.png"
            joined.quantize(colors=256).save(out, optimize=True)
            written.append(out)
    return written


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "sae-demo/recomputed.parquet")
    for p in screenshots(src, Path(__file__).resolve().parent.parent / "docs"):
        print(p, p.stat().st_size, "bytes")
