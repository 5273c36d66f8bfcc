"""The package reads in layers: a module imports only from its own layer or below, and no two
modules import each other (directly or around a circle). Every import counts, also those inside
functions. A new module must be placed in a layer here."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bench"

# lowest first; "report" and "perf" are sub-packages (their modules are one unit here)
LAYERS = [
    {"registry", "files", "env", "timing", "style", "images", "progress", "tracking"},  # leaves: no bench imports but registry, files
    {"schedules", "noise", "distances", "unet", "data", "classifier", "features", "stats"},  # components
    {"resources"},  # what a config implies (memory), from the dataset registry
    {"diffusion", "corruptions", "fidelity"},  # corruptions: Diffusion subclasses (the forward processes)
    {"sample", "metrics", "snapshots"},
    {"config"},  # RunConfig, identity, the one builder
    {"grid", "claims", "train", "trained"},  # trained: reused models; claims: published results
    {"trial", "rundir", "dryrun"},
    {"report"},  # reads only the run directory
    {"runner"},  # run_grid: floors, fan-out, report
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
    assert LAYER["runner"] > LAYER["report"] > LAYER["trial"] > LAYER["config"] > LAYER["registry"]
    assert "report" not in GRAPH["trial"] and "perf" not in GRAPH["dryrun"]  # the imports this issue removed


def submodule_imports(path: Path, package: str) -> set[str]:
    """The modules of ``bench.<package>`` that ``path`` imports ("__init__" for the package itself)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[:2] == ["bench", package]:
                out.add(parts[2] if len(parts) > 2 else "__init__")
    return out


@pytest.mark.parametrize("package", ["perf", "report"])
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
