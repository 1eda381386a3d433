"""The package's layering, read from its source: arrows point down, no cycle, no string-named import.

Levels (higher may import lower, never the reverse; equal levels may not import each other unless
they are the same package):
  cli/ (every `python -m` command)                      6
  sft/, eval/, plan/, sweep/                            5
  train/                                                4
  checkpoint/, data/                                    3
  config_validation.py                                  2
  model/, tokenizer/, sharding.py, output_dir.py        1
  fs.py (the filesystem layer every reader uses)        0
The package facade (mellama_jax/__init__.py) re-exports public names and stands above everything.
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mellama_jax"
LEVELS = {"cli": 6, "sft": 5, "eval": 5, "plan": 5, "sweep": 5, "train": 4, "checkpoint": 3, "data": 3,
          "config_validation": 2, "model": 1, "tokenizer": 1, "sharding": 1, "output_dir": 1,
          "fs": 0}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    p = ROOT.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: pathlib.Path) -> set[str]:
    """First-party modules `path` imports (`from a import b` counts as a.b when b is a module)."""
    module = _module_name(path)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            names = subs or [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "mellama_jax" or n.startswith("mellama_jax."))
    return out


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_package_has_a_level():
    top = {_package_of(m) for m in GRAPH} - {""}
    assert top <= set(LEVELS), f"packages without a level in this test: {sorted(top - set(LEVELS))}"


def upward_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs whose arrow runs up or sideways between packages."""
    bad = []
    for module, targets in graph.items():
        src = _package_of(module)
        if not src:  # the facade
            continue
        for target in targets:
            dst = _package_of(target)
            if not dst or (dst != src and LEVELS[dst] >= LEVELS[src]):
                bad.append((module, target))
    return bad


def test_no_import_runs_back_up_the_layers():
    upward = upward_edges(GRAPH)
    assert not upward, "imports that run up or sideways: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_the_checker_finds_planted_upward_imports(tmp_path):
    """Not vacuous: a module that imports upward (and sideways) is found, its downward import is not."""
    planted = tmp_path / "mellama_jax" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from mellama_jax.eval import runner\nimport mellama_jax.checkpoint.artifact\n"
                       "from mellama_jax.tokenizer import load_tokenizer\n")
    targets = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
               for n in ast.walk(ast.parse(planted.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = upward_edges({"mellama_jax.data.planted": targets})
    assert sorted(t for _, t in found) == ["mellama_jax.checkpoint.artifact", "mellama_jax.eval"]


def test_no_import_cycle():
    graph = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("where", ["mellama_jax", "launch.py", "configs"])
def test_nothing_names_import_module_or_dunder_import(where):
    paths = [ROOT / where] if where.endswith(".py") else sorted((ROOT / where).rglob("*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in paths
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bimport_module\b|__import__\(", line)]
    assert not hits, f"string-named imports: {hits}"


@pytest.mark.parametrize("low", ["data", "model", "tokenizer"])
def test_libraries_import_nothing_from_the_stages_above(low):
    above = {"checkpoint", "eval", "sft", "train", "cli", "plan", "sweep"}
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _package_of(m) == low
                 for t in ts if _package_of(t) in above)
    assert not bad, bad
