"""The package's shape, checked from its own source (docs/architecture.md): imports run one way (no circle, counting
the imports inside functions too), imports inside functions only in the CLI (start-up time), no module over ~400
lines. A change that breaks one of these fails here, naming the files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "korllama"
MAX_LINES = 400
LAZY_IMPORTS_ALLOWED = ("cli/",)  # the command's modules import heavy libraries inside commands: `--help` is fast


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(korllama module imported, inside a function?) for every import in the file; `from korllama.x import y`
    counts as importing korllama.x.y when that is a module, else korllama.x."""
    found = []
    tree = ast.parse(path.read_text("utf-8"))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        inside = id(node) in nested
        if isinstance(node, ast.Import):
            found += [(a.name, inside) for a in node.names if a.name.startswith("korllama")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("korllama"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in known else node.module, inside))
    return [(m, inside) for m, inside in found if m in known]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _ in imports_of(path, known)} - {name} for name, path in known.items()}


def test_imports_make_no_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (circle := visit(start)):
            raise AssertionError("an import circle: " + " -> ".join(circle))


def test_imports_inside_functions_only_in_the_cli():
    known = modules()
    lazy = [f"{path.relative_to(PACKAGE)}: {module}" for name, path in known.items()
            for module, inside in imports_of(path, known)
            if inside and not str(path.relative_to(PACKAGE)).startswith(LAZY_IMPORTS_ALLOWED)]
    assert not lazy, "korllama modules imported inside functions (import at the top):\n" + "\n".join(lazy)


def test_no_module_over_the_size_of_one_idea():
    long = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES]
    assert not long, "modules over ~400 lines (split them by idea):\n" + "\n".join(long)


def test_the_checker_finds_a_circle(tmp_path, monkeypatch):
    """The circle check is not vacuous: two modules importing each other inside functions are found."""
    package = tmp_path / "korllama"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from korllama import b\n")
    (package / "b.py").write_text("from korllama.a import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    assert graph() == {"korllama": set(), "korllama.a": {"korllama.b"}, "korllama.b": {"korllama.a"}}
    try:
        test_imports_make_no_circle()
    except AssertionError as exc:
        assert "korllama.a -> korllama.b -> korllama.a" in str(exc)
    else:
        raise AssertionError("the circle was not found")


# --- one owner for the evaluation folder (korllama/evaluation.py) ---------------------------------------------------

EVALUATION_OWNER = "evaluation.py"
OWNED_NAMES = ("metrics.json", "predictions.csv", "reasons.csv", "explain.json", "decision.json")
# keys only metrics.json has: reading one of them by string anywhere but its owner bypasses the typed record
METRICS_KEYS = ("per_class", "confusion", "calibration", "invalid_rate", "within_one", "qwk", "fit_cpu_seconds",
                "group_columns", "decision_rule", "off_format_rate", "macro-f1")


def evaluation_strays(path: Path) -> list[str]:
    """Where a module spells an evaluation file's name, or reads metrics.json by a string key (x["qwk"],
    x.get("confusion")) instead of through korllama.evaluation.Evaluation."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Constant) and node.value in OWNED_NAMES:
            found.append(f"{node.lineno}: the file name {node.value!r}")
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant):
            key = node.args[0].value
        if key in METRICS_KEYS:
            found.append(f"{node.lineno}: reads {key!r} by its string")
    return found


def test_the_evaluation_folder_has_one_owner():
    strays = {}
    for path in modules().values():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == EVALUATION_OWNER:
            continue
        found = [f for f in evaluation_strays(path) if not (rel == "layout.py" and "decision.json" in f)
                 # trees.json records the fit's cost under the names metrics.json gives it; Trees reads its own
                 and not (rel == "trees.py" and ("'fit_seconds'" in f or "'fit_cpu_seconds'" in f))]
        if found:
            strays[rel] = found
    assert not strays, strays


def test_the_owner_check_finds_a_stray_key(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text('def f(e):\n    return e["qwk"], e.get("confusion"), open("metrics.json")\n', "utf-8")
    assert [f.split(":")[0] for f in evaluation_strays(stray)] == ["2", "2", "2"]
