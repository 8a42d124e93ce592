"""Metric modules shipped with the package, loaded by path through `evaluate` (no hub access)."""
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def load_metric(name: str):
    import evaluate

    path = HERE / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no shipped metric '{name}' (have: {', '.join(p.name for p in HERE.iterdir() if p.is_dir() and not p.name.startswith('_'))})")
    return evaluate.load(str(path))


def compute(name: str, predictions, references) -> float:
    return float(load_metric(name).compute(predictions=predictions, references=references)[name])
