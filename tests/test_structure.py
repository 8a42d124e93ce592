"""The package's structure, checked: stages import downward only, and no module imports one above it.

Layers, lowest first (a module may import its own layer and the ones below, never above; a stage never imports
another stage). The list is the map of the package: a new module goes into the layer that says what it is.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "domainpt"

LAYERS = [
    ("foundation", ["errors", "faults", "resources", "config", "manifest", "layout", "flops"]),
    ("text and data", ["encoding", "tokenizer", "data"]),
    ("models and tasks", ["models", "tasks", "lora_targets"]),
    ("training blocks", ["training"]),
    ("scoring", ["eval"]),  # eval/ but its stage module
    ("statistics and rendering", ["report"]),  # report/ but its stage modules
    ("checks", ["preflight"]),
    ("stages", ["prepare", "pretrain", "finetune", "eval.stage", "report.compare", "report.multi"]),
    ("entry points", ["plan", "cli", "__main__", "__init__"]),
]
STAGES = dict(LAYERS)["stages"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def layer_of(module: str) -> int:
    """The layer index; the longest matching prefix decides (eval.stage is a stage, eval.scoring is scoring)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"domainpt.{module} is in no layer of tests/test_structure.py: add it where it belongs"
    return best


def domainpt_imports(path: Path) -> set[str]:
    """Every domainpt module a file imports, at the top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("domainpt"):
            for alias in node.names:  # `from domainpt.data import pii` imports the module domainpt.data.pii
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("domainpt")}
    return {m.removeprefix("domainpt").lstrip(".") for m in found} - {""}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): domainpt_imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_goes_down_the_layers_and_no_stage_imports_another():
    wrong = []
    for module, deps in import_graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
            elif dep != module and layer_of(dep) == layer_of(module) == layer_of("prepare"):
                wrong.append(f"stage {module} imports stage {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = import_graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, set())):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The walk itself: an upward import, a lazy one and a stage-to-stage one are all found."""
    f = tmp_path / "x.py"
    f.write_text("from domainpt.finetune import x\ndef g():\n    from domainpt.data import pii\n    import domainpt.eval.stage\n")
    assert domainpt_imports(f) == {"finetune", "data.pii", "eval.stage"}
    assert layer_of("eval.stage") == layer_of("finetune") > layer_of("eval.scoring") > layer_of("training.state")


def test_no_function_is_longer_than_80_lines():
    """A function one can read in one sitting: longer ones are split into named steps (pretrain's loop is the model)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
