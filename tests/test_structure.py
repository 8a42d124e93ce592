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
    ("statistics and rendering", ["report", "mixture"]),  # report/ but its stage modules; mixture/law.py (the planner's fits)
    ("checks", ["preflight"]),
    ("job runner", ["jobs", "mixture.pilots"]),  # mixture/pilots.py: the planner's pilot runs as jobs  # the fine-tune and evaluate stages' grids of jobs, shared out over processes and shards
    ("stages", ["prepare", "pretrain", "finetune", "eval.stage", "report.compare", "report.multi", "publish",
                "mixture.stage"]),
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


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def domainpt_imports(path: Path) -> set[str]:
    """Every domainpt module a file imports, at the top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "domainpt":
            for alias in node.names:  # `from domainpt.data import pii` imports the module domainpt.data.pii
                sub = f"{node.module}.{alias.name}"
                found.add(sub if is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "domainpt"}
    return {m.removeprefix("domainpt").lstrip(".") for m in found} - {""}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): domainpt_imports(p) for p in PACKAGE.rglob("*.py")}


def wrong_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up the layers, and every stage importing another stage."""
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            if layer_of(dep) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
            elif dep != module and layer_of(dep) == layer_of(module) == layer_of("prepare"):
                wrong.append(f"stage {module} imports stage {dep}")
    return sorted(wrong)


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the path round it, or None."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, set())):
            if state.get(d) == "open":
                return path + [m, d]
            if d not in state and (cycle := visit(d, path + [m])):
                return cycle
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            return cycle
    return None


def test_every_import_goes_down_the_layers_and_no_stage_imports_another():
    wrong = wrong_imports(import_graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    cycle = import_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_flags_upward_sideways_and_circular_imports(tmp_path):
    """The walk and the checks themselves, on a planted module: an upward import, a lazy one, a stage-to-stage
    one and a bare `from domainpt import <package>` are all found, and each is reported."""
    f = tmp_path / "x.py"
    f.write_text("from domainpt.finetune import x\nfrom domainpt import training\n"
                 "def g():\n    from domainpt.data import pii\n    import domainpt.eval.stage\n")
    assert domainpt_imports(f) == {"finetune", "training", "data.pii", "eval.stage"}
    assert layer_of("eval.stage") == layer_of("finetune") > layer_of("eval.scoring") > layer_of("training.state")
    assert wrong_imports({"eval.scoring": {"finetune", "encoding"}, "finetune": {"eval.stage", "tasks"}}) == [
        "eval.scoring (scoring) imports finetune (stages)", "stage finetune imports stage eval.stage"]
    assert wrong_imports({"finetune": {"tasks", "training.state", "eval.scoring"}}) == []
    assert import_cycle({"eval.masked": {"eval.perplexity"}, "eval.perplexity": {"eval.masked"}}) == [
        "eval.masked", "eval.perplexity", "eval.masked"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_is_longer_than_80_lines():
    """A function one can read in one sitting: longer ones are split into named steps (pretrain's loop is the model)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
