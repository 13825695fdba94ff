"""The layout of docs/architecture.md holds: no import cycle, the allowed import directions, small
modules, and the registry as the only place that spells out rules, options and defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sae_core import registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"sae_core": ROOT / "sae_core", "sae_verl": ROOT / "adapters" / "sae_verl",
            "sae_openrlhf": ROOT / "adapters" / "sae_openrlhf"}

# Layers from the bottom (docs/architecture.md). A module may import its own layer and those below.
LAYERS = [
    {"sae_core.types", "sae_core.arrays", "sae_core.atomic", "sae_core.version", "sae_core.spec",
     "sae_core.extras"},
    {"sae_core.registry"},
    {"sae_core.schedules"},
    {"sae_core.kernels"},
    {"sae_core.checks", "sae_core.api", "sae_core.whiten", "sae_core.segments", "sae_core"},
    {"sae_core.trajectory"},
    {"sae_core.tools"},
    {"sae_core.lab"},
    {"sae_core.tools.cli", "sae_core.__main__"},  # `sae` fronts everything, the lab's `sae demo` and `sae lab` too
    {"sae_core.integration"},
    {"sae_verl", "sae_openrlhf"},
]


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    out = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports (at any depth of its code, lazy imports included)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations, not imports at run time
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, else what `base` defines
        for target in targets:
            # the longest known module that the import names
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in MODULES and candidate != name:
                    found.add(candidate)
                    break
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if name == m or (m != "sae_core" and name.startswith(m + ".")):
                if best is None or len(m) > len(best[1]):
                    best = (i, m)
    assert best is not None, f"{name} is in no layer of docs/architecture.md"
    return best[0]


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_the_cycle_check_finds_a_cycle():
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "sae_core.types": saved["sae_core.types"] | {"sae_core.api"}}
    try:
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_no_import_cycle()
    finally:
        GRAPH = saved


def test_imports_go_down_the_layers_only():
    upward = []
    for name, targets in GRAPH.items():
        for target in targets:
            if target == "sae_core" and name.startswith("sae_core"):
                upward.append(f"{name} imports the package root sae_core")  # the root imports everything
            elif layer(target) > layer(name):
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not upward, "\n".join(upward)


def test_sae_core_never_imports_the_frameworks():
    for name, path in MODULES.items():
        if not name.startswith("sae_core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert n.split(".")[0] not in ("verl", "openrlhf"), f"{name} imports {n}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("sae_core")))
def test_modules_stay_under_500_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 500, f"{name} has {lines} lines"


def test_rules_options_and_defaults_are_data_in_the_registry_only():
    """No other module holds a literal collection naming two or more rules or two or more options
    (a table or a list of them), or uses a registry default (0.2, 0.95, 0.05) as a default value.
    A tuple tested with `in` (`rule in ("logprob", "quantile")`) is a kernel's dispatch, not data."""
    rules = set(registry.RULES)
    options = set(registry.OPTIONS)
    defaults = {registry.PAPER_THRESHOLD, registry.PAPER_LAM, registry.VAPO_ALPHA}
    found = []
    for name, path in MODULES.items():
        if name == "sae_core.registry":
            continue
        tree = ast.parse(path.read_text())
        dispatch = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                    for op, c in zip(node.ops, node.comparators) if isinstance(op, (ast.In, ast.NotIn))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and id(node) not in dispatch:
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                words = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(words & rules) >= 2 or len(words & options) >= 2:
                    found.append(f"{name}:{node.lineno} spells out {sorted(words & (rules | options))}")
            if isinstance(node, ast.arguments):
                for d in [*node.defaults, *node.kw_defaults]:
                    if isinstance(d, ast.Constant) and d.value in defaults and not isinstance(d.value, bool):
                        found.append(f"{name}:{d.lineno} has the registry default {d.value} as a default")
    assert not found, "\n".join(found)
