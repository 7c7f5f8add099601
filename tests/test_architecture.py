"""The layers of docs/architecture.md, enforced: which package may import which, and no import
circle between modules. Read from the source (every import, also the ones inside functions and
under ``TYPE_CHECKING``), so a new upward import fails here with the line that made it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kvmpage"

#: The bottom: addresses, indices, the physical-memory interface, the architecture's bits.
BASE = {"addr", "index", "panic", "memory", "segmented", "x86", "_early", "_addr_base"}

#: What each part may import besides itself and `BASE` (docs/architecture.md).
ALLOWED: dict[str, set[str]] = {
    **{name: set() for name in BASE},
    "kvm": set(),
    "machine": {"kvm"},
    "tcg": {"kvm", "machine"},
    "paging": set(),
    "image": {"paging"},
    "layout": {"paging"},
    "verify": {"paging", "layout", "image", "machine", "tcg"},
    "matrix": {"paging", "verify", "machine"},
    "cli": {"paging", "layout", "image", "machine", "tcg", "verify", "matrix"},
    "testing": {"layout", "verify", "cli", "machine"},
    "pytest_plugin": {"layout", "machine", "testing"},
    "": set(),  # kvmpage/__init__.py
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    """``kvmpage.verify.bulk`` -> ``verify``; ``kvmpage`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(name: str, path: Path, *, top_level_only: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every kvmpage module ``name`` imports."""
    is_package = path.name == "__init__.py"

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = name.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        return subs + ([base] if len(subs) < len(node.names) else [])

    def visit(nodes: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in targets(node):
                    if target in MODULES:
                        yield node.lineno, target
            elif _deferred(node):  # runs later (a function) or never (TYPE_CHECKING)
                if not top_level_only:
                    yield from visit(node.body)  # type: ignore[attr-defined]
            else:
                for field in ("body", "orelse", "finalbody"):
                    block = getattr(node, field, None)
                    if isinstance(block, list):
                        yield from visit(block)
                for handler in getattr(node, "handlers", []):
                    yield from visit(handler.body)

    yield from visit(ast.parse(path.read_text()).body)


def _deferred(node: ast.stmt) -> bool:
    """A function body or an ``if TYPE_CHECKING:`` block: imports there do not run on import."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return True
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def test_every_part_imports_only_what_its_layer_may() -> None:
    wrong = []
    for name, path in sorted(MODULES.items()):
        part = _part(name)
        assert part in ALLOWED, f"{name}: a new part of kvmpage; give it a layer in ALLOWED"
        for line, target in _imports(name, path, top_level_only=False):
            other = _part(target)
            if other not in (part, *BASE, *ALLOWED[part]) and target != "kvmpage":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {target}")
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_circle_between_modules() -> None:
    """Module-level imports form no circle (a submodule importing its own package's facade
    counts: the facade imports the submodule back)."""
    graph = {
        name: {target for _, target in _imports(name, path, top_level_only=True)}
        for name, path in MODULES.items()
    }
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it can fail


def test_every_package_offers_what_it_lists() -> None:
    """Each package's ``__all__`` (its public surface) names things it really gives, also
    where the package imports them on first use (`kvmpage.layout`)."""
    import importlib

    for name, path in sorted(MODULES.items()):
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(name)
        missing = [n for n in getattr(package, "__all__", ()) if not hasattr(package, n)]
        assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    assert {n for n, p in MODULES.items() if p.name == "__init__.py"} >= {
        f"kvmpage.{part}" for part in ALLOWED if part and (PACKAGE / part).is_dir()
    }


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: an import of the CLI from paging is found, with its line."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from kvmpage.cli import main\n    return main\n")
    found = list(_imports("kvmpage.paging.bad", module, top_level_only=False))
    assert found == [(2, "kvmpage.cli")]
    assert _part("kvmpage.cli") not in ALLOWED["paging"]
