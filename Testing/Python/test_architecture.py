"""The engine's layout rules, checked on its source: no import cycles between its modules
(function-level imports included, since they only defer a cycle), the module file thin, and the
public API typed."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "CardiacAISeg" / "CardiacAISegLib"


def _modules():
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    return mods


def _imports(name, path, mods):
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            if not found and target in mods:   # `from .pkg import name`: the module itself
                found = [target]
            out.update(found)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
    out.discard(name)
    return out


def _cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert _cycles(graph) == []


def test_the_finder_sees_a_cycle(tmp_path):
    """The check itself can fail: two modules importing each other inside functions."""
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(graph) == [["a", "b"]]


# The engine's public API, the functions the CLI, the Slicer Logic and the web GUI call: every
# parameter and the return value carry a type hint.
PUBLIC_API = [
    ("CardiacAISegLib.pipeline", "compute_analysis"),
    ("CardiacAISegLib.pipeline", "segment"),
    ("CardiacAISegLib.pipeline", "refinement_warnings"),
    ("CardiacAISegLib.readers", "load_study"),
    ("CardiacAISegLib.results", "results_document"),
    ("CardiacAISegLib.results", "results_json_text"),
    ("CardiacAISegLib.results", "results_csv_text"),
    ("CardiacAISegLib.analysis", "Analysis.run"),
    ("CardiacAISegLib.analysis", "Analysis.set_labels"),
    ("CardiacAISegLib.analysis", "Analysis.place_insertion_points"),
    ("CardiacAISegLib.analysis", "Analysis.set_bullseye_measure"),
    ("CardiacAISegLib.analysis", "Analysis.results"),
    ("CardiacAISegLib.analysis", "Analysis.table_rows"),
]


@pytest.mark.parametrize("module,qualname", PUBLIC_API)
def test_public_api_has_type_hints(module, qualname):
    import importlib
    import inspect

    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    sig = inspect.signature(obj)
    missing = [n for n, p in sig.parameters.items() if n != "self" and p.annotation is inspect.Parameter.empty]
    assert not missing, f"{module}.{qualname}: parameters without a type hint: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{module}.{qualname}: no return type hint"


def test_slicer_module_asks_for_every_engine_dependency():
    """What the Slicer module offers to pip-install is what pyproject.toml makes the engine need
    (Slicer brings numpy and VTK; torch only for TorchScript models; the cohort and model-training
    packages are CLI-only), so a package added to one is not forgotten in the other."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    module = ast.parse((root / "CardiacAISeg" / "CardiacAISeg.py").read_text())
    asked = next(ast.literal_eval(n.value) for n in module.body if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", "") == "PYTHON_PACKAGES" for t in n.targets))
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    name = lambda requirement: re.split(r"[<>=\[ ]", requirement, 1)[0].lower()   # noqa: E731
    not_for_slicer = {"numpy", "torch", "slicer-core", "dask", "pyarrow"}
    assert {name(r) for r in asked.values()} == {name(r) for r in declared} - not_for_slicer
    for requirement in asked.values():
        assert requirement in declared, f"{requirement} differs from pyproject.toml's {declared}"
