"""`domainpt publish`: a finished run's domain (or control) model as a folder the Hugging Face Hub and
`from_pretrained` take — safetensors weights, tokenizer, generation config and a README.md model card that carries the
run's verdict (report/model_card.py) — with the run's LoRA adapters of that model if asked, and uploaded if asked.

    domainpt publish runs/medical-demo --to runs/medical-demo/publish
    domainpt publish runs/legal --model control --adapters --to out/legal-control --push --repo-id me/legal-control

The folder is written under a temporary name and renamed when complete; `--push` uploads that complete folder with
huggingface_hub (create the repo, upload the folder), and without network or credentials says so in one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from domainpt.errors import DomainptError
from domainpt.manifest import run_lock
from domainpt.report.model_card import base_model, eval_results, model_card, read_json, run_facts

ARMS = {"domain": ("domain_model", "pretrain"), "control": ("control_model", "pretrain_control")}
# What a model folder may carry to the Hub: weights as safetensors only (never pickles), configs, tokenizer files.
KEEP = (".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken")
TMP = ".domainpt-tmp-"  # a publish's folder while it is written: `.<name>.domainpt-tmp-<random>` beside the destination


def default_folder(run_dir: str, model: str) -> Path:
    return Path(run_dir) / "publish" / model


def publish(run_dir: str, model: str = "domain", to: str | None = None, adapters: bool = False, repo_id: str | None = None,
            language: list[str] | None = None) -> Path:
    run = Path(run_dir)
    if not (run / "compare" / "manifest.json").is_file():  # a stage redone since (--force) removed it: no stale card
        raise DomainptError(f"{run}: compare has not finished there: publish takes a finished run (`domainpt run RECIPE`)")
    arm, stage = ARMS[model]
    source = run / stage / "model"
    if arm not in read_json(run / "compare" / "results.json").get("arms", ["general_model", "domain_model"]):
        raise DomainptError(f"{run}: this run has no {model} model (compare.control was 'none')")
    if not list(source.glob("*.safetensors")):
        raise DomainptError(f"{source}: no safetensors weights to publish")
    dest = Path(to) if to else default_folder(run_dir, model)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DomainptError(f"{dest} exists and is not an empty folder: pass another --to, or remove it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # a run on read-only storage cannot be rewritten by anyone while it is copied, and cannot take the lock either
        with (run_lock(run) if os.access(run, os.W_OK) else contextlib.nullcontext()):
            for stale in dest.parent.glob(f".{dest.name}{TMP}*"):  # left by a publish that was killed
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}{TMP}"))
            try:
                _write_folder(run, arm, source, tmp, adapters, repo_id, language, dest)
                if dest.exists():
                    dest.rmdir()
                tmp.rename(dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as e:  # an unwritable --to, a full disk
        raise DomainptError(f"{dest}: cannot write the published folder ({e.strerror or e})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(dest, 0o777 & ~umask)  # mkdtemp made it private to its owner
    return dest


def _write_folder(run: Path, arm: str, source: Path, tmp: Path, adapters: bool, repo_id: str | None, language,
                  dest: Path) -> None:
    facts = run_facts(run, arm, repo_id, language, [])
    copy_model(source, tmp, facts.recipe.model.trust_remote_code)
    # an adapter names its base: the published repo, or (no repo id yet) the published folder itself
    base = repo_id or str(dest.resolve())
    facts.adapters = copy_adapters(run, facts.recipe, arm, tmp, base) if adapters else []
    write_card(tmp / "README.md", model_card(facts), expected=len(eval_results(facts)))
    for task_seed in facts.adapters:
        write_adapter_card(tmp / "adapters" / task_seed, facts, task_seed, base)


def is_published(folder: Path) -> bool:
    """A folder an earlier publish finished: weights and a card (what a --push after a failed upload sends)."""
    return folder.is_dir() and (folder / "README.md").is_file() and any(folder.glob("*.safetensors"))


def published_for(folder: Path) -> str | None:
    """The name a published folder's card was written for: the --repo-id it was published with (or the run's name)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.model_name


def copy_model(source: Path, dest: Path, trust_remote_code: bool = False) -> None:
    """Weights, config, tokenizer and generation config (made from the model's config when the run saved none); a
    model whose recipe trusted its remote code keeps that code (.py), which its config needs to load."""
    keep = KEEP + ((".py",) if trust_remote_code else ())
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name.endswith(keep):
            shutil.copy2(f, dest / f.name)
    if not (dest / "generation_config.json").is_file():
        from transformers import AutoConfig, GenerationConfig

        config = AutoConfig.from_pretrained(dest, trust_remote_code=trust_remote_code)
        GenerationConfig.from_model_config(config).save_pretrained(dest)


def copy_adapters(run: Path, recipe, arm: str, dest: Path, base: str) -> list[str]:
    """Every task's and seed's adapter of the published model (the recipe's tasks x seeds, each required), as
    adapters/<task>/seed<k>/; their base is the published model (repo id or folder), not the run's local path."""
    found = []
    for task in recipe.tasks:
        for seed in recipe.lora.seeds:
            adapter = run / "finetune" / task.name / arm / f"seed{seed}" / "adapter"
            if not (adapter / "adapter_config.json").is_file():
                raise DomainptError(f"{adapter}: missing; the run's adapters are incomplete (rerun `domainpt run RECIPE`)")
            target = dest / "adapters" / task.name / f"seed{seed}"
            shutil.copytree(adapter, target)
            config = json.loads((target / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = base
            (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
            found.append(f"{task.name}/seed{seed}")
    return found


def write_card(path: Path, text: str, expected: int) -> None:
    """Write the card after checking it the way the Hub reads it (huggingface_hub's model-card parsing): every
    result the card was given comes back out of its model-index."""
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    if len(card.data.eval_results or []) != expected:
        raise DomainptError(f"{path}: the model card's model-index gave {len(card.data.eval_results or [])} eval results, "
                            f"not the {expected} it was written with")
    path.write_text(text, encoding="utf-8")


def write_adapter_card(folder: Path, facts, task_seed: str, base: str) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    task, seed = task_seed.split("/")
    t = facts.res["tasks"].get(task, {})
    score = t.get(facts.arm, {}).get("finetuned", {}).get("seeds", [])
    index = facts.recipe.lora.seeds.index(int(seed.removeprefix("seed")))  # copy_adapters took the recipe's seeds
    # the Hub's base_model is a repo id; a local folder is named in the text (and in adapter_config.json) instead
    data = ModelCardData(base_model=facts.repo_id, library_name="peft", tags=["domainpt", "lora", task])
    hub_id, _ = base_model(facts.recipe)
    text = (f"# LoRA adapter: {task}, {seed}\n\nA LoRA adapter (peft) trained on the task **{task}** on top of the "
            f"{'model in this repository' if facts.repo_id else f'model in `{base}`'} (the run's "
            f"{facts.arm.replace('_', ' ')}{', from ' + hub_id if hub_id else ''}), with the settings of every model and "
            f"seed of the run." + (f" This seed's {t['metric']} on the run's test items: {100 * score[index]:.1f}%." if index < len(score) else "")
            + "\n\nSee the repository's README.md for the comparison with the general model.\n")
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(folder / "README.md")


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Create the Hub repo and upload the folder; any failure (offline, no token, no right) is one line. A repository
    that exists public is not uploaded to when --private was asked."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DomainptError(f"push to {repo_id}: HF_HUB_OFFLINE is set (no network); the folder is complete: {folder}")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id).private:
            raise DomainptError(f"push to {repo_id}: --private was asked but the repository exists and is public; "
                                f"nothing uploaded (the folder is complete: {folder})")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload a domainpt model and its card")
    except DomainptError:
        raise
    except Exception as e:  # network, credentials, permissions: huggingface_hub raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DomainptError(f"push to {repo_id} failed ({first}); the folder is complete: {folder}") from None
    return f"https://huggingface.co/{repo_id}"
