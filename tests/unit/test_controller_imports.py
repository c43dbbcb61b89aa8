"""The controller-only process (``plexus-ipamd --mode controller``) loads no netlink, no store, no node side.

It runs as its own Deployment, away from any node's network: pyroute2 there would be dead weight (and
a sign that node code leaked into it). Proven twice: by the static import closure of its modules, and
by building the process exactly as ``main`` does and looking at what got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.test_shim_imports import imports_of

REPO = Path(__file__).resolve().parents[2]
NODE_ONLY = ("pyroute2", "ipamd.netlink", "ipamd.node", "ipamd.verbs", "ipamd.drivers", "ipamd.store.sqlite",
             "ipamd.server", "grpc", "sqlite3")


def module_path(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def closure(*roots: str) -> dict[str, set[str]]:
    """Project modules reachable from ``roots`` by any import statement (function-level included)."""
    seen: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = module_path(name)
        if name in seen or path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        seen[name] = imports_of(path, package)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(m for m in seen[name] if m.split(".")[0] in ("cni", "ipamd"))
    return seen


def test_the_controller_modules_import_no_node_side() -> None:
    reached = closure("ipamd.kube.controller_process", "ipamd.kube.client", "ipamd.config")
    assert "ipamd.kube.controller" in reached and "ipamd.kube.webhook" in reached
    bad = {m: sorted(i for i in imported if i.startswith(NODE_ONLY)) for m, imported in reached.items()}
    assert {m: b for m, b in bad.items() if b} == {}
    assert not [m for m in reached if m.startswith(NODE_ONLY)]


def test_building_the_controller_process_loads_no_node_side(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    code = (
        "import sys, json\n"
        "from ipamd.config import parse_args\n"
        "from ipamd.main import build\n"
        f"cfg = parse_args(['--mode', 'controller', '--kubeconfig', {str(kubeconfig)!r}, '--webhook-port', '0',"
        " '--health-port', '0'])\n"
        "process = build(cfg)\n"
        "print(json.dumps([type(process).__name__, sorted(sys.modules)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    kind, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kind == "ControllerProcess"
    assert "kubernetes" in modules and "ipamd.kube.controller" in modules  # it did build the controller
    assert [m for m in modules if m.startswith(NODE_ONLY)] == []
