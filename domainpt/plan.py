"""`domainpt run RECIPE --dry-run`: validate the recipe and print what the run will do and cost,
without downloading or computing anything.

    domainpt run recipes/medical.yaml --dry-run --processes 8 --gpu H100

Model sizes come from the model's config: a local folder, the Hugging Face cache, or (offline) a
config snapshot shipped in domainpt/hub_configs/. FLOPs use the same formula as training's MFU
(6N + 12·L·H·T per trained token, PaLM appendix B); LoRA steps count 4N (no weight gradients for
the frozen base); scoring counts 2N per token.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from domainpt.errors import DomainptError
from domainpt.eval.harness import check_task_names, harness_tasks
from domainpt.flops import PEAK_FLOPS, flops_per_token, matmul_params
from domainpt.jobs.grid import HARNESS_DOCUMENTS, evaluate_jobs, finetune_jobs
from domainpt.jobs.runner import assign
from domainpt.models import PACKAGED, is_encoder, objective_for

SNAPSHOTS = Path(__file__).parent / "hub_configs"
# Packaged models are conversions of these hub checkpoints (same architecture).
PACKAGED_HUB_ID = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M"}
GB = 1e9


def offline_config(base: str, trust_remote_code: bool = False):
    """(config, where it came from) without network access."""
    from transformers import AutoConfig

    p = Path(base).expanduser()
    if p.is_dir():
        return AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code), f"local folder {p}"
    hub_id = PACKAGED_HUB_ID.get(base, base)
    if base in PACKAGED:
        from domainpt.resources import cache_root

        converted = cache_root() / "models" / base
        if (converted / "config.json").is_file():
            return AutoConfig.from_pretrained(converted), f"packaged model {base} ({converted})"
    try:
        return AutoConfig.from_pretrained(hub_id, local_files_only=True, trust_remote_code=trust_remote_code), \
            f"Hugging Face cache ({hub_id})"
    except (OSError, ValueError):
        pass
    snap = SNAPSHOTS / (hub_id.replace("/", "__") + ".json")
    if snap.is_file():
        d = {k: v for k, v in json.loads(snap.read_text()).items() if not k.startswith("_")}
        cls = AutoConfig.for_model(d["model_type"]).__class__
        return cls(**{k: v for k, v in d.items() if k != "model_type"}), f"snapshot {snap.relative_to(SNAPSHOTS.parent.parent)}"
    if base.startswith((".", "/", "~")):
        raise DomainptError(f"model not found: {base}")
    raise DomainptError(f"--dry-run needs the config of '{base}' offline: run once with network access (it is cached), "
                        f"or point model.base at a local folder")


def model_shape(recipe) -> dict:
    config, where = offline_config(recipe.model.base, recipe.model.trust_remote_code)
    for k, v in recipe.model.config_overrides.items() if recipe.model.init == "random" else ():
        if not hasattr(config, k):
            raise DomainptError(f"model.config_overrides.{k}: {config.model_type} config has no such key")
        setattr(config, k, v)
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    objective = objective_for(config, recipe.model.objective)
    cls = AutoModelForMaskedLM if is_encoder(config) else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    return {"config_from": where, "model_type": config.model_type, "objective": objective, "params": n_params,
            "matmul_params": matmul_params(model), "layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "vocab": config.vocab_size, "context": getattr(config, "max_position_embeddings", None)}


def build_plan(recipe, processes: int = 1, gpu: str | None = None) -> dict:
    gpu = gpu or recipe.report.gpu
    if gpu not in PEAK_FLOPS:
        raise DomainptError(f"unknown GPU '{gpu}' (known: {', '.join(PEAK_FLOPS)})")
    shape = model_shape(recipe)
    tc, lc, ec, dc = recipe.train, recipe.lora, recipe.eval, recipe.data
    if shape["context"] and dc.seq_len > shape["context"]:
        raise DomainptError(f"data.seq_len={dc.seq_len} is longer than the model's context ({shape['context']} positions)")
    tokens_per_step = tc.process_batch(processes) * tc.grad_accum * processes * dc.seq_len
    train_tokens = tokens_per_step * tc.max_steps
    per_token = flops_per_token(shape["matmul_params"], shape["layers"], shape["hidden"], dc.seq_len)
    pretrain_flops = per_token * train_tokens
    # Fine-tuning and evaluation are grids of jobs (jobs/grid.py), costed in forward-token equivalents (2N FLOPs
    # each): a LoRA token 2 (forward 2N + activation gradients 2N; the frozen base gets no weight gradients), a
    # scored token 1; a masked LM's pseudo-perplexity runs one window per scored token (eval/masked.py).
    n_models = 3 if recipe.compare.control != "none" else 2  # general, domain (and the control arm's model)
    budgets = [lc.for_task(t) for t in recipe.tasks]  # each task's own LoRA steps and batch size
    ft_jobs, ev_jobs = finetune_jobs(recipe), evaluate_jobs(recipe, shape["objective"])
    flops_per_cost = 2 * shape["matmul_params"]
    ft_tokens = sum(j.cost for j in ft_jobs) // 2
    ft_flops = flops_per_cost * sum(j.cost for j in ft_jobs)
    eval_tokens = sum(j.cost for j in ev_jobs)
    eval_flops = flops_per_cost * eval_tokens
    peak, mfu = PEAK_FLOPS[gpu], recipe.report.assumed_mfu
    control_flops = pretrain_flops if n_models == 3 else 0.0  # same steps and tokens per step, on general text
    gpu_h = {k: f / (peak * mfu) / 3600 for k, f in (("pretrain", pretrain_flops), ("pretrain_control", control_flops),
                                                     ("finetune", ft_flops), ("evaluate", eval_flops))}
    token_bytes = 2 if shape["vocab"] <= 65536 else 4
    n = shape["params"]
    disk = {"token_shards": train_tokens * token_bytes,
            "checkpoints": (n_models - 1) * tc.keep_last * n * (4 + 8),  # per arm: fp32 weights + AdamW's two fp32 moments
            "models": n * 4 * ((2 if recipe.model.init == "random" else 1) + n_models - 2),
            "hub_download": n * 2 if recipe.model.base not in PACKAGED and not Path(recipe.model.base).exists() else 0}
    return {"recipe": recipe.name, "domain": recipe.domain, "out_dir": recipe.out_dir, "model": {"base": recipe.model.base, **shape},
            "processes": processes, "gpu": gpu, "assumed_mfu": mfu,
            "data": {"domain_sources": [_src(s) for s in dc.domain], "general_sources": [_src(s) for s in dc.general],
                     "replay_share": dc.replay_share, "seq_len": dc.seq_len},
            "pretrain": {"steps": tc.max_steps, "tokens_per_step": tokens_per_step, "tokens": train_tokens,
                         "flops_per_token": per_token, "flops": pretrain_flops, "gpu_hours": gpu_h["pretrain"],
                         "schedule": tc.schedule, "lr": tc.lr, "warmup_steps": tc.warmup_steps},
            "pretrain_control": {"arm": recipe.compare.control, "steps": tc.max_steps, "tokens": train_tokens,
                                 "flops": control_flops, "gpu_hours": gpu_h["pretrain_control"]} if n_models == 3 else None,
            "finetune": {"models": n_models, "runs": len(ft_jobs), "tokens": ft_tokens, "flops": ft_flops,
                         "gpu_hours": gpu_h["finetune"], **job_plan(ft_jobs, processes, flops_per_cost / (peak * mfu) / 3600)},
            "evaluate": {"tokens": eval_tokens, "flops": eval_flops, "gpu_hours": gpu_h["evaluate"],
                         **job_plan(ev_jobs, processes, flops_per_cost / (peak * mfu) / 3600)},
            "process_batch": tc.process_batch(processes),
            "harness": harness_plan(ec),
            "tasks": [{"name": t.name, "type": t.type, "source": _src(t.source),
                       "test_source": _src(t.test_source) if t.test_source else None,
                       "lora_steps": b.steps, "lora_batch_size": b.batch_size} for t, b in zip(recipe.tasks, budgets)],
            "total_flops": pretrain_flops + control_flops + ft_flops + eval_flops, "total_gpu_hours": sum(gpu_h.values()),
            "disk_bytes": disk, "disk_total_bytes": sum(disk.values())}


def job_plan(jobs, processes: int, hours_per_cost: float) -> dict:
    """The stage's jobs shared out as the stage will share them (longest first onto the least-loaded process):
    each process's jobs and GPU-hours, the wall time (the busiest process) and the balance (mean / busiest load)."""
    shares = assign(jobs, processes)
    hours = [sum(j.cost for j in share) * hours_per_cost for share in shares]
    return {"jobs": len(jobs), "per_process": [{"jobs": len(sh), "gpu_hours": h} for sh, h in zip(shares, hours)],
            "wall_hours": max(hours), "balance": sum(hours) / (processes * max(hours)) if max(hours) else 1.0}


def harness_plan(ec) -> dict | None:
    """The lm-eval tasks every model will be scored on (checked against lm-eval's index: a typo stops here)."""
    named = harness_tasks(ec)
    if not named:
        return None
    check_task_names(ec)
    return {"domain": [t for t, p in named.items() if p == "domain"], "forgetting": [t for t, p in named.items() if p == "forgetting"],
            "fewshot": ec.harness_fewshot, "limit": ec.harness_limit}


def _n(x: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def _src(s) -> str:
    where = s.path or (f"builtin:{s.builtin}" if s.builtin else
                       f"hf:{s.hf}" + (f"@{s.revision}" if s.revision else "") + (f" ({s.hf_config})" if s.hf_config else "")
                       + (f" [{s.split}]" if s.split != "train" else ""))
    return where + (f", at most {s.max_docs:,} docs" if s.max_docs else "")


def _control_lines(p: dict) -> list[str]:
    c = p["pretrain_control"]
    if not c:
        return []
    return [f"  control   {c['arm']}: the general model on general text only, same {c['steps']:,} steps = {_n(c['tokens'])} tokens "
            f"-> {c['flops']:.3g} FLOPs = {c['gpu_hours']:,.3g} {p['gpu']}-hours; fine-tuned and scored as a third model"]


def _job_lines(stage: dict, p: dict) -> list[str]:
    """The per-process plan of a job stage: every process when there are few, else the busiest and the lightest."""
    per, unit = stage["per_process"], f"{p['gpu']}-hours"
    head = (f"            on {p['processes']} process(es): wall ~{stage['wall_hours']:.3g} h (the busiest process), "
            f"balance {stage['balance']:.0%}")
    if len(per) <= 8:
        return [head] + [f"              process {i}: {x['jobs']} job(s), {x['gpu_hours']:.3g} {unit}" for i, x in enumerate(per)]
    jobs, hours = [x["jobs"] for x in per], [x["gpu_hours"] for x in per]
    return [head + f"; per process {min(jobs)}-{max(jobs)} job(s), {min(hours):.3g}-{max(hours):.3g} {unit}"
                   + (f" ({jobs.count(0)} process(es) without a job: fewer jobs than processes)" if 0 in jobs else "")]


def format_plan(p: dict) -> str:
    m, pt, ft, ev = p["model"], p["pretrain"], p["finetune"], p["evaluate"]
    lines = [
        f"[domainpt] dry run of '{p['recipe']}' ({p['domain']}) -> {p['out_dir']}; nothing downloaded or computed",
        f"  model     {m['base']}: {m['model_type']}, {m['params'] / 1e6:,.1f}M parameters, {m['layers']} layers, "
        f"hidden {m['hidden']}, vocab {m['vocab']:,}, context {m['context']} (config: {m['config_from']})",
        f"  stages    prepare -> pretrain{' + pretrain_control' if p['pretrain_control'] else ''} -> finetune -> evaluate -> compare",
        f"  prepare   domain: {'; '.join(p['data']['domain_sources'])}",
        f"            general (replay {p['data']['replay_share']:.0%} + forgetting check): {'; '.join(p['data']['general_sources']) or 'none'}",
        f"  pretrain  {m['objective']}, {pt['steps']:,} steps x {pt['tokens_per_step']:,} tokens/step on {p['processes']} process(es) "
        f"= {_n(pt['tokens'])} tokens; {pt['schedule']} schedule, peak lr {pt['lr']:g}, warm-up {pt['warmup_steps']}",
        f"            data-parallel: {p['process_batch']} block(s) per process per micro-batch; prepare and compare run on "
        f"the main process, finetune and evaluate share their jobs out (below)",
        f"            {pt['flops_per_token']:.3g} FLOPs/token -> {pt['flops']:.3g} FLOPs = {pt['gpu_hours']:,.3g} {p['gpu']}-hours at {p['assumed_mfu']:.0%} MFU",
        *_control_lines(p),
        f"  finetune  {ft['runs']} LoRA runs ({len(p['tasks'])} task(s) x {ft['models']} models x seeds), ~{_n(ft['tokens'])} tokens, "
        f"{ft['flops']:.3g} FLOPs = {ft['gpu_hours']:.3g} {p['gpu']}-hours",
        *_job_lines(ft, p),
        f"  evaluate  {ev['jobs']} jobs (perplexity per model, scores per task x model and seed), ~{_n(ev['tokens'])} tokens "
        f"scored, {ev['flops']:.3g} FLOPs = {ev['gpu_hours']:.3g} {p['gpu']}-hours",
        *_job_lines(ev, p),
    ]
    if h := p.get("harness"):
        lines.append(f"  harness   lm-evaluation-harness on every model: {', '.join(h['domain']) or 'none'}"
                     + (f"; forgetting: {', '.join(h['forgetting'])}" if h["forgetting"] else "")
                     + (f"; at most {h['limit']} documents per task" if h["limit"] else
                        f" (planned at {HARNESS_DOCUMENTS:,} documents per task: a task's size is known once lm-eval loads it)"))
    for t in p["tasks"]:
        lines.append(f"  task      {t['name']} ({t['type']}): {t['source']}" + (f"; test: {t['test_source']}" if t["test_source"] else "")
                     + f"; LoRA {t['lora_steps']} steps x {t['lora_batch_size']} examples")
    d = p["disk_bytes"]
    wall = (pt["gpu_hours"] + (p["pretrain_control"] or {}).get("gpu_hours", 0.0)) / p["processes"] + ft["wall_hours"] + ev["wall_hours"]
    lines += [f"  total     {p['total_flops']:.3g} FLOPs, {p['total_gpu_hours']:,.3g} {p['gpu']}-hours "
              f"(wall time on {p['processes']} GPU(s): ~{wall:,.3g} h, prepare and compare not counted)",
              f"  disk      ~{p['disk_total_bytes'] / GB:,.3g} GB: token shards {d['token_shards'] / GB:,.3g}, checkpoints "
              f"{d['checkpoints'] / GB:,.3g}, models {d['models'] / GB:,.3g}, download {d['hub_download'] / GB:,.3g} "
              f"(corpora streamed, not stored)"]
    return "\n".join(lines)


def mixture_plan(recipe, processes: int = 1, gpu: str | None = None) -> dict:
    """`plan-mixture --dry-run`: the pilots' tokens, FLOPs and GPU-hours (each pilot one process), their share out over
    the processes, and their ratio to the full run the plan is for (its budget in tokens)."""
    from domainpt.mixture.pilots import LENGTH_FACTOR, length_share, pilot_jobs
    from domainpt.mixture.stage import budget_tokens, pilots_cost_warning, tokens_per_step

    full = build_plan(recipe, processes, gpu)
    mp, shape = recipe.mixture_plan, full["model"]
    jobs = pilot_jobs(recipe, tokens_per_step(recipe))
    tokens = sum(j.cost for j in jobs)
    budget = budget_tokens(recipe)  # the budget the plan recommends for
    per_token = full["pretrain"]["flops_per_token"]
    hours_per_token = per_token / (PEAK_FLOPS[full["gpu"]] * full["assumed_mfu"]) / 3600
    return {"recipe": recipe.name, "model": shape, "gpu": full["gpu"], "assumed_mfu": full["assumed_mfu"],
            "processes": processes, "shares": mp.replay_shares, "holdout_share": mp.holdout_share,
            "pilot_steps": mp.pilot_steps, "eval_points": mp.eval_points, "tokens": tokens, "flops": tokens * per_token,
            "gpu_hours": tokens * hours_per_token, "full_tokens": budget, "full_gpu_hours": budget * hours_per_token,
            "ratio": tokens / budget, "warning": pilots_cost_warning(recipe),
            "length_check": {"replay_share": length_share(recipe), "steps": LENGTH_FACTOR * mp.pilot_steps}
            if mp.length_check else None,
            **job_plan(jobs, processes, hours_per_token)}


def format_mixture_plan(p: dict) -> str:
    shares = ", ".join(f"{s:g}" for s in p["shares"])
    return "\n".join([
        f"[domainpt] dry run of plan-mixture for '{p['recipe']}'; nothing downloaded or computed",
        f"  pilots    {len(p['shares'])} of {p['model']['base']} at replay shares {shares} (held out of the fit: "
        f"{p['holdout_share']:g}), {p['pilot_steps']} steps each, {p['eval_points']} held-out checks along each"
        + (f"; and one of {p['length_check']['steps']} steps at {p['length_check']['replay_share']:g} (the length check)"
           if p["length_check"] else ""),
        f"  cost      {_n(p['tokens'])} tokens, {p['flops']:.3g} FLOPs = {p['gpu_hours']:.3g} {p['gpu']}-hours at "
        f"{p['assumed_mfu']:.0%} MFU (each pilot also runs prepare)",
        f"  vs run    the budget planned for: {_n(p['full_tokens'])} tokens, {p['full_gpu_hours']:.3g} {p['gpu']}-hours; "
        f"the pilots cost {p['ratio']:.2f}x its tokens",
        *([f"  {p['warning']}"] if p.get("warning") else []),
        *_job_lines(p, p)])
