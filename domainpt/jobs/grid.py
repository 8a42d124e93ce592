"""The jobs of the fine-tune and evaluate stages, each with a planned cost — the one list the stages run, `--shard`
slices and `--dry-run` plans.

    finetune: one LoRA run per task x model x seed              ("<task>/<model>/seed<k>")
    evaluate: held-out perplexity per model                      ("perplexity/<model>")
              k-shot scores before fine-tuning per task x model  ("zero_shot/<task>/<model>", with eval.zero_shot)
              fine-tuned scores per task x model x seed          ("finetuned/<task>/<model>/seed<k>")
              each lm-eval task (or group) the recipe names x model ("harness/<task>/<model>", with eval.harness_tasks)

Costs come from the recipe alone (no data is read), in forward-token equivalents (FLOPs / 2N, N the model's matmul
parameters): a LoRA step's token costs 2 (forward, and the activation gradients of a frozen base), a scored token 1.
They only need to rank the jobs well; the manifests record each job's measured seconds beside its planned cost.
"""
from __future__ import annotations

from domainpt.jobs.runner import Job
from domainpt.layout import models_of

ANSWER_TOKENS = 16      # a LoRA example's answer and end-of-text, beyond the prompt (as plan.py counted)
CHOICE_TOKENS = 4       # a scored choice's continuation after the prompt's cache (eval/scoring.py)
UNKNOWN_CHOICES = 4     # multiple-choice items, or a classification task whose labels come from the data
HARNESS_DOCUMENTS = 1000  # per lm-eval task when eval.harness_limit is unset: its real size is unknown before loading
HARNESS_DOC_TOKENS = 4 * 256  # ~4 choices of a ~256-token context


def finetune_jobs(recipe) -> list[Job]:
    jobs = []
    for task in recipe.tasks:
        budget = recipe.lora.for_task(task)  # a task may set its own steps and batch size
        cost = 2 * budget.steps * budget.batch_size * (task.max_prompt_tokens + ANSWER_TOKENS)
        jobs += [Job(f"{task.name}/{model}/seed{seed}", "lora", model, task.name, seed, cost)
                 for model in models_of(recipe) for seed in recipe.lora.seeds]
    return jobs


def item_tokens(task) -> int:
    """Forward tokens to score one test item: the prompt once, then each choice's short continuation (or the
    generated answer of a qa task)."""
    if task.type == "qa":
        return task.max_prompt_tokens + task.max_answer_tokens
    n_choices = len(task.labels) if task.type == "classification" and task.labels else UNKNOWN_CHOICES
    return task.max_prompt_tokens + n_choices * CHOICE_TOKENS


def evaluate_jobs(recipe, objective: str = "clm") -> list[Job]:
    """`objective` 'mlm': pseudo-perplexity runs one window per scored token (eval/masked.py)."""
    ec, models = recipe.eval, models_of(recipe)
    per_scored = ec.ppl_window if objective == "mlm" else 1
    jobs = [Job(f"perplexity/{m}", "perplexity", m, cost=2 * ec.ppl_max_tokens * per_scored) for m in models]  # 2 kinds
    for task in recipe.tasks:
        cost = task.test_size * item_tokens(task)
        if ec.zero_shot:
            jobs += [Job(f"zero_shot/{task.name}/{m}", "zero_shot", m, task.name, None, cost) for m in models]
        jobs += [Job(f"finetuned/{task.name}/{m}/seed{s}", "finetuned", m, task.name, s, cost)
                 for m in models for s in recipe.lora.seeds]
    named = list(dict.fromkeys(ec.harness_tasks + ec.forgetting_tasks))  # eval.harness.harness_tasks' order
    cost = (ec.harness_limit or HARNESS_DOCUMENTS) * HARNESS_DOC_TOKENS
    jobs += [Job(f"harness/{name}/{m}", "harness", m, name, None, cost) for name in named for m in models]
    return jobs
