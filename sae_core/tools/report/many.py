"""Reports on several files (`sae report DIR|GLOB|FILE... --out DIR`): one page per file, and an
index page that compares the files side by side (a row per file: sizes, response lengths, each
output set's advantage mean and std and boundary fraction, the boundary fraction at each
threshold), each row linking to the file's own page.

Which pages a set of files gets (`page_names`), whether they may be written (`check_out_dir`) and
the index (`render_index`); `write_reports` in the package writes them all.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..summary import Inspection
from .html import _CSS, _fmt, _pct

INDEX = "index.html"


@dataclass(frozen=True)
class Page:
    """The outcome for one file of `write_reports`: `file` as given, `page` the path of its page
    under the output directory, `inspection` its summary when the page was written, else None and
    `problems` (one line each) say why not."""

    file: str
    page: Path
    inspection: Inspection | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.inspection is not None


def page_names(files: Sequence[str | os.PathLike]) -> list[Path]:
    """The relative path of each file's page: the file's path relative to the deepest directory
    holding all of them, with ".html" added to its whole name (`a/s-0.parquet` ->
    `a/s-0.parquet.html`, so that `s-0.parquet` and `s-0.arrow` get different pages). Raises
    ValueError when two files would get the same page (the same file given twice, or files on
    different drives)."""
    if not files:
        raise ValueError("files is empty: give at least one file")
    # a file's place is its name in its (resolved) directory, as `sae recompute` mirrors shards
    placed = [Path(f).parent.resolve() / Path(f).name for f in files]
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in placed]))
    except ValueError:  # different drives: no common directory
        raise ValueError("the files have no common directory (different drives?): report on them apart") from None
    pages = [p.relative_to(root).with_name(p.name + ".html") for p in placed]
    seen: dict[Path, str] = {}
    for f, page in zip(files, pages, strict=True):
        if page in seen:
            raise ValueError(f"{os.fspath(f)} and {seen[page]} would share the page {page}: give each file once")
        seen[page] = os.fspath(f)
    return pages


def check_out_dir(out: str | os.PathLike, pages: Sequence[Path], *, overwrite: bool = False) -> Path:
    """`out` as a Path if the pages (relative paths, `page_names`) and the index can be written
    under it: `out` is a directory or does not exist yet (it is then created by the writes), and
    none of those files exists unless `overwrite`. Raises NotADirectoryError for an `out` that is a
    file, FileExistsError naming the first page that exists (nothing has been written then)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file: several files get a page each in a directory; give one")
    if not overwrite:
        for rel in [*pages, Path(INDEX)]:
            if (out / rel).exists() or (out / rel).is_symlink():
                raise FileExistsError(f"{out / rel} exists; pass --overwrite to replace it")
    return out


def render_index(pages: Sequence[Page], out: str | os.PathLike) -> str:
    """The index page (self-contained HTML, like the reports) of `pages`, which lie under the
    directory `out` (the links are relative to it): one row per file written, the output sets
    and thresholds of all files as columns (a dash where a file lacks one), then the files whose
    page could not be written, with why."""
    e, out = html.escape, Path(out)
    done = [p for p in pages if p.ok]
    sets: dict[str, None] = {}
    thresholds: dict[float, None] = {}
    for p in done:
        sets.update(dict.fromkeys(s.name for s in p.inspection.sets))
        thresholds.update(dict.fromkeys(t.threshold for t in p.inspection.thresholds))
    header = ["file", "rows", "tokens", "valid", "mean length", "p90 length"]
    for name in sets:
        header += [f"{name} mean", f"{name} std", f"{name} boundary"]
    header += [f"logprobs < log {t:g}" for t in sorted(thresholds)]
    rows = []
    for p in done:
        ins = p.inspection
        by_name = {s.name: s for s in ins.sets}
        by_p = {t.threshold: t for t in ins.thresholds}
        link = f'<a href="{e(p.page.relative_to(out).as_posix())}">'
        cells = [f'<td class="l">{link}{e(p.file)}</a></td>']
        numbers = [ins.rows, ins.tokens, _pct(ins.valid_tokens / ins.tokens) if ins.tokens else "\u2013",
                   _fmt(ins.valid_lengths.mean), _fmt(ins.valid_lengths.p90)]
        for name in sets:
            s = by_name.get(name)
            numbers += ["\u2013"] * 3 if s is None else [
                _fmt(s.advantages.mean), _fmt(s.advantages.std),
                "\u2013" if s.segments is None else _pct(s.segments.fraction)]
        numbers += ["\u2013" if t not in by_p else _pct(by_p[t].segments.fraction) for t in sorted(thresholds)]
        cells += [f"<td>{e(v if isinstance(v, str) else _fmt(v))}</td>" for v in numbers]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f'<th{" class=l" if i == 0 else ""}>{e(h)}</th>' for i, h in enumerate(header))
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sae report: "
             f"{len(pages)} files</title><style>{_CSS}</style></head><body><main>",
             f"<h1>sae report: {len(done)} of {len(pages)} files</h1>",
             '<p class="sub">one row per file (its page behind the link); advantages over valid tokens; boundary: '
             "the fraction of valid tokens that start a segment; length: valid tokens per response</p>",
             f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>']
    failed = [p for p in pages if not p.ok]
    if failed:
        parts.append("<h2>not reported</h2><ul>")
        parts += [f"<li>{e(p.file)}: {e('; '.join(p.problems))}</li>" for p in failed]
        parts.append("</ul>")
    parts.append("</main></body></html>")
    return "".join(parts)


__all__ = ["INDEX", "Page", "check_out_dir", "page_names", "render_index"]
