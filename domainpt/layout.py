"""Where a run keeps what the stages hand each other: the models compared, prepare's task splits and held-out texts.

    out_dir/prepare/tasks/<task>/{train,test}.jsonl     task splits (tasks.py writes them)
    out_dir/prepare/heldout_{domain,general}.jsonl       held-out texts for perplexity
    general_model = prepare's base model; domain_model = out_dir/pretrain/model;
    control_model = out_dir/pretrain_control/model (compare.control only)

Every stage that needs one of these asks here, so a path is written once.
"""
from __future__ import annotations

from pathlib import Path

from domainpt.manifest import CONTROL_STAGE, has_control, read_jsonl, require_done, stage_dir

MODELS = ("general_model", "domain_model")
CONTROL_MODEL = "control_model"  # compare.control: the general model continued on general text (pretrain_control)
HELDOUT_KINDS = ("domain", "general")


def models_of(recipe) -> tuple[str, ...]:
    """The models fine-tuned and scored: MODELS, and the control model when the recipe has a control arm."""
    return MODELS + ((CONTROL_MODEL,) if has_control(recipe) else ())


def model_stages(recipe) -> list[str]:
    """The stages whose outputs are the models compared (and their data): what fine-tuning reads."""
    return ["prepare", "pretrain"] + ([CONTROL_STAGE] if has_control(recipe) else [])


def model_paths(recipe, needed_by: str = "finetune") -> dict:
    """Model name -> checkpoint path; the stages that make them must be done."""
    prep = require_done(recipe, "prepare", needed_by)
    require_done(recipe, "pretrain", needed_by)
    paths = {"general_model": prep["base_model"], "domain_model": str(stage_dir(recipe, "pretrain") / "model")}
    if has_control(recipe):
        require_done(recipe, CONTROL_STAGE, needed_by)
        paths[CONTROL_MODEL] = str(stage_dir(recipe, CONTROL_STAGE) / "model")
    return paths


def task_dir(recipe, task_name: str) -> Path:
    """prepare's train/test split of one task."""
    return stage_dir(recipe, "prepare") / "tasks" / task_name


def read_heldout(prep_dir: Path) -> dict[str, list[str]]:
    """Held-out texts written by prepare, by kind ('domain', 'general'); a kind without a file is absent."""
    return {k: [r["text"] for r in read_jsonl(Path(prep_dir) / f"heldout_{k}.jsonl")]
            for k in HELDOUT_KINDS if (Path(prep_dir) / f"heldout_{k}.jsonl").is_file()}
