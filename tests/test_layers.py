"""The package's layering, checked on the source: dependencies point one way, no two modules import each other
(directly or around a circle), the evidence never reaches into the search, and nothing imports the CLI."""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
# lowest first; a module may import from its own rank or below (peers only without a circle, checked separately)
RANKS = [
    {"errors", "dotted", "redact"},
    {"registry", "atomic"},
    {"config"},
    {"data", "models", "storage"},
    {"rundir", "artifacts", "export", "predict"},
    {"training", "tracking"},
    {"search", "cluster"},  # the cluster launcher runs the search's workers; the search calls it
    {"evidence", "reporting"},
    {"api", "estimators"},
    {"cli", "__main__"},
]
RANK = {part: i for i, parts in enumerate(RANKS) for part in parts}


def _name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in (SRC / "nntune").rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The nntune modules ``module`` imports at its top level (what runs when it is imported)."""
    found = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nntune"):
            for alias in node.names:  # ``from nntune import artifacts`` imports the module nntune.artifacts
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
    return found - {module}


GRAPH = {m: _imports(m) for m in MODULES}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_package_has_a_rank():
    assert {_part(m) for m in MODULES if m != "nntune"} <= set(RANK)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "nntune"))
def test_imports_point_down(module):
    upward = [t for t in GRAPH[module] if t != "nntune" and RANK[_part(t)] > RANK[_part(module)]]
    assert not upward, f"{module} imports {upward} from a higher layer"


def test_no_circles():
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v] - {"nntune"}:  # the package's own __init__ re-exports the API: every module is below it
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles


def test_the_evidence_needs_training_not_the_search():
    reach = [(m, t) for m in GRAPH if _part(m) == "evidence" for t in GRAPH[m] if _part(t) == "search"]
    assert not reach


def test_nothing_imports_the_cli():
    assert not [m for m in GRAPH if _part(m) not in ("cli", "__main__") and any(_part(t) == "cli" for t in GRAPH[m])]
