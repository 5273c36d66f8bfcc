"""The package reads in layers, and the folder listing shows them: a folder of ``bench`` imports only
folders below it (and the leaf modules at the root), and no two modules import each other (directly
or around a circle), also inside a folder. Every import counts, also those inside functions. A new
module goes into the folder of what it is; a new folder must be placed in a layer here."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bench"

# lowest first: one entry a folder ("unit"), and one for each leaf module at the root
LAYERS = [
    {"registry", "files", "env", "timing", "style", "progress"},  # leaves: nothing of bench
    {"images"},  # a leaf helper over files
    {"process", "data", "models", "optim"},  # the components: forward processes, datasets, networks, optimisation
    {"sampling", "scoring"},  # sampling from a process; metrics, features and statistics
    {"experiment"},  # the flat RunConfig, arm labels, grids, claims, reference ranks, the run directory's layout
    {"training", "report"},  # training a config (and reusing it); the report reads a run directory
    {"run"},  # a trial, the dry run, the runner: plan, fan-out, progress, resume
    {"perf"},  # the tool that measures the suite
    {"__main__", "__init__"},  # the CLI
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def bench_imports(path: Path) -> set[str]:
    """The bench units ``path`` imports (every import statement, at any depth)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "bench":
                out.add(parts[1] if len(parts) > 1 else None)
                if len(parts) == 1:  # from bench import features
                    out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bench.")}
    return {m for m in out if m}


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
GRAPH: dict[str, set[str]] = {}
for _p in MODULES:
    GRAPH.setdefault(unit(_p), set()).update(bench_imports(_p) - {unit(_p)})


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LAYER)) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    up = sorted(m for m in GRAPH[module] if LAYER[m] > LAYER[module])
    assert up == [], f"{module} (layer {LAYER[module]}) imports higher layers: {[(m, LAYER[m]) for m in up]}"


def test_no_circular_import():
    def visit(node, path):
        for nxt in GRAPH.get(node, ()):
            if nxt in path:
                raise AssertionError(" -> ".join(path[path.index(nxt):] + [nxt]))
            visit(nxt, path + [nxt])

    for start in GRAPH:
        visit(start, [start])


def test_the_check_can_fail():
    assert LAYER["run"] > LAYER["report"] > LAYER["experiment"] > LAYER["scoring"] > LAYER["process"] > LAYER["registry"]
    assert "report" in GRAPH["run"] and "run" not in GRAPH["report"] and "perf" not in GRAPH["run"]


def test_at_most_eight_floors():
    """Issue 30: the longest chain of folder imports has at most 8 units (12 before the folders)."""
    @functools.cache
    def height(node):
        return 1 + max((height(n) for n in GRAPH[node]), default=0)

    assert max(height(n) for n in GRAPH) <= 8


def test_every_module_lives_in_a_folder_or_is_a_leaf():
    """A module at the root is a leaf helper (layers 0-1) or the CLI; the rest live in their folder."""
    roots = {p.stem for p in PACKAGE.glob("*.py")}
    assert sorted(r for r in roots if LAYER.get(r, 99) > 1) == ["__init__", "__main__"]


def submodule_imports(path: Path, package: str) -> set[str]:
    """The modules of ``bench.<package>`` that ``path`` imports ("__init__" for the package itself)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[:2] == ["bench", package]:  # from bench.run.trial import x; from bench.run import trial
                out |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names}
    return out


@pytest.mark.parametrize("package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()))
def test_no_cycle_inside_a_subpackage(package):
    """Issue 30: perf/__init__.py and perf/report.py imported each other inside functions, which the
    package-level graph above cannot see."""
    graph = {p.stem: submodule_imports(p, package) - {p.stem} for p in (PACKAGE / package).glob("*.py")}

    def visit(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                raise AssertionError(f"bench/{package}: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
