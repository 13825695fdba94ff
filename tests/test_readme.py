"""The README's promises: its snippet runs and prints what the README shows, its links resolve, and
the set-up commands stay at the top of the set-up section.

The snippet is the first ```python block after the marker `<!-- snippet: tested by
tests/test_readme.py -->`; the ```text block right after it (past one paragraph of prose at most)
is the output the README shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "<!-- snippet: tested by tests/test_readme.py -->"
# Pages whose relative links are checked besides the README (the ones the README sends readers to).
DOCS = ["docs/api.md", "docs/architecture.md", "docs/benchmarks.md", "docs/recompute.md", "docs/testing.md"]


def _fenced_after(text: str, start: int, language: str) -> tuple[str, int]:
    """The body of the first ```language block at or after `start`, and where the block ends."""
    match = re.compile(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S).search(text, start)
    assert match, f"no ```{language} block after position {start} of README.md"
    return match.group(1), match.end()


def snippet_and_output() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    at = text.find(MARKER)
    assert at >= 0, f"README.md lost the marker {MARKER!r} before its snippet"
    gap = text[at + len(MARKER):].lstrip("\n")
    assert gap.startswith("```python"), "the snippet's ```python block must follow the marker directly"
    code, end = _fenced_after(text, at, "python")
    output, _ = _fenced_after(text, end, "text")
    return code, output


def test_snippet_is_short():
    code, _ = snippet_and_output()
    lines = [line for line in code.splitlines() if line.strip()]
    assert 5 <= len(lines) <= 15, f"the README's snippet has {len(lines)} lines; keep it about 10"


def test_snippet_runs_and_prints_what_the_readme_shows(tmp_path):
    code, shown = snippet_and_output()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TRITON_INTERPRET", None)  # a fresh reader's process: no test settings
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"the README's snippet failed:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    # the shape: one line of boundary flags, then sae's and gae's advantages of row 0, 12 numbers each
    assert [line.split(":")[0] for line in lines] == ["boundary", "A (sae)", "A (gae)"], proc.stdout
    for line in lines:
        numbers = re.findall(r"-?\d+(?:\.\d*)?", line.split(":", 1)[1])
        assert len(numbers) == 12, line
    flags = [int(x) for x in re.findall(r"\d+", lines[0].split(":", 1)[1])]
    assert set(flags) <= {0, 1} and 0 < sum(flags) < 12, "some tokens, not all, start a segment"
    # and the numbers the README shows are the ones it prints
    assert proc.stdout.split() == shown.split(), (
        "the output README.md shows after its snippet differs from what the snippet prints; update it to:\n"
        + proc.stdout)


def _links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # no links inside code blocks
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)  # [text](target) and ![alt](target)
    targets += re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", *DOCS])
def test_relative_links_point_to_files(page):
    path = ROOT / page
    if page != "README.md" and not path.exists():
        pytest.skip(f"{page} is gone")
    missing = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        linked = path.parent / file
        if not linked.exists():
            missing.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            missing.append(target)
    assert not missing, f"{page} links to files or headings that do not exist: {missing}"


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"),
                                                      flags=re.M | re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_links_the_picture_and_the_docs():
    links = set(_links(README))
    assert any(t.endswith(".png") for t in links), "the README shows one picture"
    for page in ["docs/benchmarks.md", "docs/testing.md", "docs/architecture.md", "docs/api.md"]:
        assert page in links, f"the README links {page}"
    # the picture the README shows inline (`![alt](target)`), not a linked screenshot: the first in the text
    shown = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", README.read_text(encoding="utf-8"),
                                                            flags=re.M | re.S))
    assert shown, "the README shows one picture inline"
    picture = ROOT / shown[0]
    assert picture.stat().st_size < 150_000, f"{picture.name} is {picture.stat().st_size} bytes; keep it small"


def test_setup_commands_open_the_setup_section():
    text = README.read_text(encoding="utf-8")
    setup = text.index("\n## Set up")
    assert setup < 3000, "the set-up section comes right after the opening paragraph"
    block, _ = _fenced_after(text, setup, "bash")
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["./dev main", "./dev test"], commands
    assert text.index("```bash", setup) < text.index("\n", setup + 1) + 3, "the commands open the section"


def test_readme_says_which_sae_it_is():
    text = README.read_text(encoding="utf-8")
    assert "Segmental Advantage Estimation" in text[:1500]
    assert "not sparse autoencoders" in text[:2500]
    assert "pip install sae-rl" not in text, "nothing is on PyPI: install from a clone or a wheel"
