"""The layers point one way (docs/architecture.md). Every import in every module, module-level or inside a
function, is read with ``ast`` and checked against the table below; the module graph must have no cycle."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "drivers", "backend", "tools", "firmware_sim")

#: layer -> the layers it may import (itself included). Third-party and standard-library imports are not listed.
ALLOWED = {
    "gateway.core": {"gateway.core"},
    "drivers": {"drivers", "gateway.adapters", "gateway.core"},  # drivers are IO adapters too (atomic files)
    "gateway.adapters": {"gateway.adapters", "gateway.core"},
    "gateway.app": {"gateway.app", "gateway.adapters", "gateway.core", "drivers"},
    "gateway.cli": {"gateway.app", "gateway.adapters", "gateway.core", "drivers", "backend", "tools"},
    "backend": {"backend", "gateway.adapters", "gateway.core"},
    "tools": {"tools", "backend", "gateway.app", "gateway.adapters", "gateway.core", "drivers", "firmware_sim"},
    "firmware_sim": {"firmware_sim", "gateway.core"},
}


def layer(module):
    for name in sorted(ALLOWED, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    if module == "gateway":
        return "gateway"  # the package itself: __version__ only
    return None


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imports(module, path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target
            for alias in node.names:  # 'from gateway.core import wire' imports gateway.core.wire
                yield "%s.%s" % (target, alias.name)


MODULES = dict(modules())


def own(name):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer(m) is None and m != "gateway"] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer(module)
    allowed = ALLOWED.get(mine, set(ALLOWED))
    bad = sorted({t for t in imports(module, MODULES[module]) if own(t) and own(t) != "gateway"
                  and layer(own(t)) not in allowed})
    assert bad == [], "%s (%s) may import only %s" % (module, mine, sorted(allowed))


def test_no_import_cycles():
    graph = {m: {own(t) for t in imports(m, p) if own(t) and own(t) != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is not a cycle of design
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []
