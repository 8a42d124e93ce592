"""What a demo's size can detect: the minimum detectable difference (80% power, 95% intervals) of every fine-tuned
comparison of a finished run, planned for other numbers of seeds and test items from that run's variance
components (issue 17: the demo should detect 5 points).

    python bench/demo_power.py [RECIPE] [out_dir=RUN_DIR ...]     # default recipes/demo/medical.yaml

It reads only the spread of the per-item differences (seed, item and residual variance), never which model is
ahead, so sizing the next run from it is a power analysis, not tuning on test scores. Prints one row per
comparison and design; the first design is the run's own, whose planned value equals the report's mdd.
"""
import sys

from domainpt.config import load_recipe
from domainpt.layout import models_of
from domainpt.report.arms import COMPARISONS
from domainpt.report.compare import prediction_matrices
from domainpt.report.stats import item_differences, planned_mdd

DESIGNS = [(3, 120), (3, 300), (4, 300), (5, 300), (8, 300), (4, 600)]


def main(recipe_path: str, overrides: list[str]) -> None:
    recipe = load_recipe(recipe_path, overrides)
    arms = models_of(recipe)
    seeds = len(recipe.lora.seeds)
    for task in recipe.tasks:
        finetuned, _, refs = prediction_matrices(recipe, task, arms)
        for key, a, b in COMPARISONS:
            if a not in finetuned or b not in finetuned:
                continue
            d = item_differences(task.metric, finetuned[a], finetuned[b], refs)
            designs = [(seeds, d.shape[1])] + [x for x in DESIGNS if x != (seeds, d.shape[1])]
            cells = "  ".join(f"{s}x{i}: {100 * planned_mdd(d, s, i):4.1f}" for s, i in designs)
            print(f"{task.name:24s} {key:22s} mdd (points) at seeds x items  {cells}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args and "=" not in args[0] else "recipes/demo/medical.yaml", [a for a in args if "=" in a])
