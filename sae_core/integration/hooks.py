"""Run a function on a module as soon as it is imported (or now, if it already is).

The adapters use this to patch a framework's modules in every process, including Ray workers,
without importing the framework themselves: a process that never imports the module pays nothing,
and one where the module cannot import is unaffected. Nothing here knows any framework.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Mapping
from types import ModuleType

_PATCHES: dict[str, list[Callable[[ModuleType], None]]] = {}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the module's patches."""

    def __init__(self, loader, name: str):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        for patch in _PATCHES.get(self.name, ()):
            patch(module)

    def __getattr__(self, attr):  # get_source, get_filename, ...: the real loader's
        return getattr(self.loader, attr)


class PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds the modules that have patches as Python would, and gives them a patching loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


def on_import(patches: Mapping[str, Callable[[ModuleType], None]]) -> None:
    """For each (module name, patch): call patch(module) when the module is imported, or now if it
    already is. The patches must be idempotent: a second registration of the same function (by
    qualified name, so a reloaded adapter counts as the same) replaces the first."""
    if not any(type(f).__name__ == "PatchingFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, PatchingFinder())
    for name, patch in patches.items():
        key = (patch.__module__, patch.__qualname__)
        kept = [p for p in _PATCHES.get(name, []) if (p.__module__, p.__qualname__) != key]
        _PATCHES[name] = [*kept, patch]
        module = sys.modules.get(name)
        if module is not None:
            patch(module)
