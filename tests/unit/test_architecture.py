"""The package's layout holds: imports point one way (stages -> tasks -> engine -> core) with no cycle,
counting imports inside functions; no module grows past 500 lines; stages ask the task interface, not
the task's name; the io environment's stages import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from snakescope.tasks import task_names

PACKAGE = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "snakescope"
MAX_LINES = 500
# Layer of each top-level name of the package; a module may import its own layer or lower ones.
CORE = {"__init__", "io", "images", "lazy_images", "plots", "logs", "provenance", "uncertainty_measures", "synthetic", "store",
        "resources"}
LAYERS = {"core": 0, "engine": 1, "tasks": 2, "stages": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top in ("engine", "tasks"):
        return LAYERS[top]
    return LAYERS["core"] if top in CORE else LAYERS["stages"]


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports_of(module: str) -> set[str]:
    """Package modules `module` imports anywhere in its source (functions included)."""
    found = set()
    for node in runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in MODULES and name != module:
                found.add(name)
                break  # `from a.b import c`: the module c when it is one, else a.b
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_no_import_cycle():
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        path.append(module)
        for imported in sorted(GRAPH[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_imports_point_down_the_layers():
    upward = [
        f"{module} ({layer(module)}) imports {imported} ({layer(imported)})"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if layer(imported) > layer(module)
    ]
    assert not upward, upward


def test_no_module_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def task_name_uses(tree: ast.AST) -> int:
    """Comparisons with a task's name and lookup tables keyed by task names."""
    names = set(task_names())

    def is_name(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            count += any(is_name(o) or (isinstance(o, ast.Tuple | ast.Set | ast.List) and any(map(is_name, o.elts)))
                         for o in operands)
        elif isinstance(node, ast.Dict):
            count += any(is_name(key) for key in node.keys)
    return count


def test_stages_ask_the_task_interface_not_the_task_name():
    outside = {name: task_name_uses(ast.parse(path.read_text())) for name, path in MODULES.items()
               if not name.startswith("snakescope.tasks")}
    assert sum(outside.values()) <= 5, {name: n for name, n in outside.items() if n}


def test_io_environment_stages_import_without_torch():
    # convert, split, evaluate, summary and library run in envs/io.yaml, which has no PyTorch
    code = (
        "import sys\n"
        "import snakescope.convert, snakescope.split, snakescope.evaluate, snakescope.summary, snakescope.library\n"
        "from snakescope.tasks import get_task, task_names\n"
        "[get_task(name) for name in task_names()]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'torchvision')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(PACKAGE.parent)}, check=True)
    assert result.stdout.strip() == "[]"


def test_a_cached_rule_depends_on_every_module_its_script_imports():
    from snakescope.provenance import imported_modules

    scripts = PACKAGE.parent
    convert = {module_name(p) for p in imported_modules(scripts / "convert.py", PACKAGE)}
    # reached through the task registry (loaded by name at run time) and through a function-level import
    assert {"snakescope.tasks.instance_segmentation.labels", "snakescope.tasks.regression.metrics",
            "snakescope.convert.read", "snakescope.images"} <= convert
    split = {module_name(p) for p in imported_modules(scripts / "split.py", PACKAGE)}
    assert "snakescope.split" in split and "snakescope.convert" not in split
