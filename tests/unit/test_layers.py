"""The layering of hdbl_mpi (ARCHITECTURE, CONTRIBUTING): an import may only point down a layer or stay in its
own, never up, and no module imports itself round a cycle. Read from the source with ast, imports inside
functions included (they run too); imports under `if TYPE_CHECKING:` are types only and may point anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hdbl_mpi"

# Bottom to top. A module belongs to the first prefix it starts with.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (1, ("hdbl_mpi.errors", "hdbl_mpi.schema", "hdbl_mpi.rules", "hdbl_mpi.datasets")),
    (2, ("hdbl_mpi.comm", "hdbl_mpi.data", "hdbl_mpi.models", "hdbl_mpi.optim", "hdbl_mpi.precision",
         "hdbl_mpi.throughput", "hdbl_mpi.engine")),
    (3, ("hdbl_mpi.run.",)),
    (4, ("hdbl_mpi.profiling", "hdbl_mpi.report")),
    (5, ("hdbl_mpi.config", "hdbl_mpi.config_checks", "hdbl_mpi.run_config", "hdbl_mpi.startup")),
    (6, ("hdbl_mpi.ps", "hdbl_mpi.baselines")),
    (7, ("hdbl_mpi.launch", "hdbl_mpi.sweep", "hdbl_mpi.evaluate")),
    (8, ("hdbl_mpi.train", "hdbl_mpi.cli", "hdbl_mpi.__main__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module in ("hdbl_mpi", "hdbl_mpi.run"):  # the package faces: a version string, a docstring
        return 1 if module == "hdbl_mpi" else 3
    for number, prefixes in LAYERS:
        if any(module == p.rstrip(".") or module.startswith(p if p.endswith(".") else p + ".") or module == p
               for p in prefixes):
            return number
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to ARCHITECTURE's list)")


def runtime_imports(path: Path) -> set[str]:
    """hdbl_mpi modules `path` imports when it runs (not those imported for type checking only)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(node.test) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hdbl_mpi"):
            names = [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module` imports the module
            found.add(node.module)
            found.update(n for n in names if _is_module(n))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hdbl_mpi"))
    return found


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


MODULES = {module_name(p): runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_points_up_a_layer():
    upward = [f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})" for m, imports in MODULES.items()
              for i in sorted(imports) if layer(i) > layer(m)]
    assert upward == [], "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {i for i in imports if i in MODULES and i != m} for m, imports in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            if not target.startswith(module + "."):  # a package's face handing on its own modules is no cycle
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above cannot pass by reading nothing: a plan module importing the server is flagged."""
    bad = tmp_path / "plan.py"
    bad.write_text("from hdbl_mpi.ps.server import Server\nif TYPE_CHECKING:\n    from hdbl_mpi.cli import main\n")
    imports = runtime_imports(bad)
    assert imports == {"hdbl_mpi.ps.server"} and layer("hdbl_mpi.ps.server") > layer("hdbl_mpi.rules.plan")


@pytest.mark.parametrize("module", ["hdbl_mpi.schema", "hdbl_mpi.rules.plan", "hdbl_mpi.rules.merge",
                                    "hdbl_mpi.rules.policy", "hdbl_mpi.config", "hdbl_mpi.startup"])
def test_the_low_rooms_and_start_up_load_neither_torch_nor_mpi(module):
    """The schema and the rules are layer 1; the config check and the start-up module are read before torch loads
    (a bad config ends the job within seconds)."""
    code = f"import sys, {module}; assert 'torch' not in sys.modules and 'mpi4py.MPI' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
