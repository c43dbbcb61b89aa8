"""The exec'd plugin is standard library only: every heavy import would be paid on every pod start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"pyroute2", "grpc", "grpc_health", "google", "kubernetes", "yaml", "prometheus_client", "ipamd"}
ENTRY_MODULES = ("cni.shim", "cni.__main__")


def test_importing_the_shim_loads_nothing_heavy() -> None:
    code = ("import sys, cni.shim, cni.__main__; "
            f"heavy=[m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "cni":
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports_of(path: Path, package: str) -> set[str]:
    """Every module an import statement in the file names, wherever it sits (top level, function, TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{alias.name}" for alias in node.names)  # "from cni import errors"
    return names


def shim_closure() -> dict[str, set[str]]:
    """The cni modules the shim imports, transitively, each with what it imports."""
    seen: dict[str, set[str]] = {}
    todo = list(ENTRY_MODULES) + ["cni"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        seen[name] = imports_of(path, package)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        todo.extend(m for m in seen[name] if m.split(".")[0] == "cni")
    return seen


def test_closure_is_found() -> None:
    closure = shim_closure()
    assert {"cni", "cni.shim", "cni.__main__", "cni.errors", "cni.version"} <= set(closure)



def test_the_plugin_package_holds_the_plugin_and_the_wire_protocol_only() -> None:
    """Netlink and namespaces are the daemon's: every module of ``cni/`` is standard library (and cni) only."""
    modules = {p.stem for p in (REPO / "cni").glob("*.py")}
    assert modules == {"__init__", "__main__", "shim", "errors", "version", "wirejson", "types", "names"}
    for path in (REPO / "cni").glob("*.py"):
        for name in imports_of(path, "cni"):
            top = name.split(".")[0]
            assert top == "cni" or top == "__future__" or top in sys.stdlib_module_names, f"{path.name} imports {name}"


@pytest.mark.parametrize("module", sorted(shim_closure()))
def test_shim_modules_import_nothing_heavy(module: str) -> None:
    heavy = sorted(m for m in shim_closure()[module] if m.split(".")[0] in HEAVY)
    assert heavy == [], f"{module} imports {heavy}"


def test_shim_modules_import_only_the_standard_library_and_cni() -> None:
    for module, imported in shim_closure().items():
        for name in imported:
            top = name.split(".")[0]
            assert top == "cni" or top == "__future__" or top in sys.stdlib_module_names, f"{module} imports {name}"
