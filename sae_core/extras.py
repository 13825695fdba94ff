"""Optional dependencies: importing one that may be missing, and the one-line error when it is.

sae_core needs only numpy, numba, pyarrow and tqdm. What else a feature imports comes with an
extra of the sae-rl distribution (pyproject.toml): `report` (matplotlib: `sae report`, `sae demo`'s
report), `ray` (`sae recompute --engine ray`), `openrlhf` (`sae-openrlhf-train-ppo`), `verl`,
`examples` (transformers) and `torch`. A feature imports its package with `require`, which turns a
missing package into `MissingExtra`, whose message is one line naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed. `str(exc)` is one line, e.g.
    `sae report needs matplotlib: pip install "matplotlib>=3.7" (sae-rl's "report" extra)`.

    package: the missing distribution's import name; extra: the sae-rl extra that installs it;
    needed_by: the feature that needs it (a command, a function).
    """

    def __init__(self, package: str, extra: str, needed_by: str):
        self.package, self.extra, self.needed_by = package, extra, needed_by
        super().__init__(f"{needed_by} needs {package}: {install_hint(extra)}", name=package)


def install_hint(extra: str) -> str:
    """How to install what sae-rl's `extra` brings, as one phrase: `pip install "ray[data]>=2.9"
    (sae-rl's "ray" extra)`, the requirements read from the installed distribution's metadata
    (sae-rl is not on PyPI, so `pip install "sae-rl[ray]"` would ask an index for someone else's
    package); without that metadata, `install sae-rl with its "ray" extra`."""
    import importlib.metadata

    try:
        requirements = importlib.metadata.requires("sae-rl") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    wanted = []
    for text in requirements:
        spec, _, marker = text.partition(";")
        if f'extra == "{extra}"' in marker.replace("'", '"'):
            wanted.append(f'"{spec.strip()}"')
    if not wanted:
        return f'install sae-rl with its "{extra}" extra'
    return f"pip install {' '.join(wanted)} (sae-rl's \"{extra}\" extra)"


def require(module: str, *, extra: str, needed_by: str, package: str | None = None) -> ModuleType:
    """Import `module` (a dotted name), or raise MissingExtra when it, or a package it imports, is
    not installed. package: the name the message gives (default: the top-level name of `module`).

    A package that is installed but fails to import for another reason raises its own ImportError.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtra(package or module.partition(".")[0], extra, needed_by) from exc


def available(module: str) -> bool:
    """Whether `module` (a top-level name, e.g. "torch") is installed, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module in sys.modules without a spec
        return False


__all__ = ["MissingExtra", "available", "install_hint", "require"]
