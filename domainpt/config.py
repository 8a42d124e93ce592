"""Recipes: one YAML file per run, parsed into the dataclasses below.

    cfg = load_recipe("recipes/demo/legal.yaml", ["train.max_steps=20"])

Each field's `help` is the one place its meaning is documented (the README table is generated from it).
Unknown keys, wrong types and impossible values are errors that name the recipe file and the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from domainpt.errors import DomainptError


QA_METRICS = ("exact_match", "token_f1")  # qa tasks: scored per example on generated answers


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field carrying its documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def choices_of(hint: Any) -> tuple | None:
    """The allowed values of a Literal[...] field (also inside `X | None`), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((c for h in typing.get_args(hint) if (c := choices_of(h))), None)
    return None


def check_choices(obj) -> None:
    """Every Literal-typed field of a config dataclass holds one of its values: the type is the one list of them
    (the check, this error and `domainpt keys` all read it)."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        allowed, value = choices_of(hint), getattr(obj, name)
        optional = type(None) in typing.get_args(hint)
        if allowed and value not in allowed and not (value is None and optional):
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


@dataclass
class SourceConfig:
    """Where documents come from: a local file/folder, a packaged demo corpus, or a hub dataset."""

    path: str | None = _f(None, "Local file or folder (.txt .jsonl .json .csv .parquet, optionally .gz/.zst).")
    builtin: str | None = _f(None, "A corpus that ships inside an installed package (see `domainpt sources`).")
    hf: str | None = _f(None, "A Hugging Face dataset id, read with streaming (needs network).")
    hf_config: str | None = _f(None, "Dataset configuration name for `hf`.")
    revision: str | None = _f(None, "Branch, tag or commit of `hf` (default: main). 'refs/convert/parquet' reads the hub's "
                                    "parquet export, the way to a dataset that still ships a loading script (which "
                                    "`datasets` 4+ no longer runs); there `hf_config` names the export's config folder.")
    split: str = _f("train", "Dataset split for `hf`.")
    text_field: str = _f("text", "Record field holding the document text ('a.b' for nested fields; a list of strings is joined).")
    name: str | None = _f(None, "Short name used in stats and cards (default: derived from the source).")
    licence: str | None = _f(None, "Licence as you declare it; copied into the data card.")
    weight: float = _f(1.0, "Relative token weight when several domain sources are mixed.")
    max_docs: int | None = _f(None, "Read at most this many documents (after bad records are skipped).")
    filter: dict = _f({}, "Keep only records whose fields have these values, e.g. {topic: business} or {topic: [a, b]}.")

    def __post_init__(self):
        given = [k for k in ("path", "builtin", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("exactly one of path, builtin, hf must be set")
        if self.revision is not None and not (self.hf and self.revision.strip()):
            raise ValueError("revision applies to an `hf` source and must not be empty")
        if self.weight <= 0:
            raise ValueError("weight must be > 0")
        if self.max_docs is not None and self.max_docs <= 0:
            raise ValueError("max_docs must be > 0")
        if self.name is None:
            self.name = Path(self.path).stem if self.path else (self.builtin or self.hf).replace("/", "_")


@dataclass
class CleanConfig:
    enabled: bool = _f(True, "Run the cleaning filters at all.")
    normalize_unicode: bool = _f(True, "NFC-normalise text.")
    collapse_whitespace: bool = _f(True, "Collapse runs of spaces/tabs and of 3+ newlines.")
    min_chars: int = _f(200, "Drop documents shorter than this (characters, after cleaning).")
    max_chars: int = _f(1_000_000, "Drop documents longer than this (a runaway file is not a document).")
    max_symbol_ratio: float = _f(0.3, "Drop documents whose share of non-alphanumeric, non-space characters is above this.")
    max_repeated_line_ratio: float = _f(0.5, "Drop documents whose share of duplicated lines is above this.")


@dataclass
class DedupConfig:
    exact: bool = _f(True, "Drop documents whose normalised text hash was already seen.")
    near: bool = _f(True, "Drop near-duplicates found with MinHash LSH (datasketch).")
    threshold: float = _f(0.8, "Estimated Jaccard similarity of word 5-gram sets above which documents are near-duplicates.")
    num_perm: int = _f(128, "MinHash permutations: more is more precise and slower.")
    shingle_words: int = _f(5, "Words per shingle.")

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")


@dataclass
class PIIConfig:
    enabled: bool = _f(True, "Replace e-mails, phone numbers, SSNs, card numbers, IBANs and IPs with typed placeholders.")
    types: list = _f(["email", "phone", "ssn", "credit_card", "iban", "ip"], "Which PII types to replace.")


@dataclass
class DecontamConfig:
    enabled: bool = _f(True, "Check training documents against every evaluation text (held-out text, task test sets).")
    ngram: int = _f(13, "n-gram length: words against task test texts (13 is the usual choice: GPT-3, Llama reports), "
                        "tokens against the held-out perplexity text.")
    action: Literal["drop", "report"] = _f("drop", "'drop' contaminated training documents or only 'report' them.")

    def __post_init__(self):
        check_choices(self)


@dataclass
class ReadingComprehensionConfig:
    share: float = _f(1.0, "Share of domain training documents that get exercises (a seeded coin per document).")
    max_per_kind: int = _f(2, "Exercises per kind and document, at most (six kinds: title, word_to_text, nli, commonsense, "
                              "paraphrase, completion).")
    max_chars: int = _f(20000, "Characters of each document searched for exercises (sentence splitting is the cost).")
    keywords: int = _f(100, "Domain keywords for word_to_text: the words the domain uses far more than general text.")
    sample_docs: int = _f(2000, "Documents of each kind (the first ones read) the keywords are computed from.")
    seed: int = _f(0, "Seed for which documents are transformed and which exercises are kept.")

    def __post_init__(self):
        if not 0 < self.share <= 1 or self.max_per_kind < 1 or self.max_chars < 100 or self.keywords < 1 \
                or self.sample_docs < 1:
            raise ValueError("need 0 < share <= 1, max_per_kind >= 1, max_chars >= 100, keywords >= 1, sample_docs >= 1")


@dataclass
class DataConfig:
    domain: list = _f([], "Domain corpora for continued pre-training (list of sources).")
    general: list = _f([], "General text: held-out part measures forgetting, the rest is replay data.")
    replay_share: float = _f(0.1, "Share of pre-training tokens drawn from general text (replay curbs forgetting).")
    heldout_docs: int = _f(20, "Documents of each kind (domain, general) held out for perplexity; never trained on.")
    seq_len: int = _f(512, "Tokens per packed training block.")
    seed: int = _f(0, "Seed for splits and shuffles in prepare.")
    num_proc: int = _f(1, "Processes `prepare` runs on this machine (one shard each: read, clean, scrub, MinHash, tokenize). "
                          "The output is byte-identical for any value, so it is not part of the run's fingerprint.")
    max_bad_share: float = _f(0.01, "Bad records (broken lines, invalid UTF-8, missing field) are skipped and counted; "
                                    "more than this share of a source stops prepare with an error.")
    max_record_mb: int = _f(64, "A record larger than this is a bad record (a runaway file is not a document).")
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"help": "Cleaning filters."})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"help": "Exact and near-duplicate removal."})
    pii: PIIConfig = field(default_factory=PIIConfig, metadata={"help": "PII scrubbing."})
    decontam: DecontamConfig = field(default_factory=DecontamConfig, metadata={"help": "Decontamination against eval texts."})
    transform: Literal["none", "reading_comprehension"] = _f("none", "'reading_comprehension': append to each domain training document question/answer "
                                "exercises mined from it (AdaptLLM, Cheng et al. 2024: recovers the prompting ability raw "
                                "domain text can cost). Held-out text stays raw, so perplexities compare with a raw run.")
    reading_comprehension: ReadingComprehensionConfig = field(default_factory=ReadingComprehensionConfig,
                                                              metadata={"help": "Limits and seed of the reading-comprehension transform."})

    def __post_init__(self):
        check_choices(self)
        if not self.domain:
            raise ValueError("at least one domain source is needed")
        if not 0 <= self.replay_share < 1:
            raise ValueError("replay_share must be in [0, 1)")
        if self.replay_share > 0 and not self.general:
            raise ValueError("replay_share > 0 needs general sources")
        if self.seq_len < 8 or self.heldout_docs < 1:
            raise ValueError("seq_len must be >= 8 and heldout_docs >= 1")
        if self.num_proc < 1:
            raise ValueError("num_proc must be >= 1")
        if not 0 <= self.max_bad_share <= 1 or self.max_record_mb <= 0:
            raise ValueError("max_bad_share must be in [0, 1] and max_record_mb > 0")


@dataclass
class TaskConfig:
    name: str = _f(None, "Task name used in results and reports.")
    type: Literal["classification", "multiple_choice", "qa"] = _f("classification", "'classification' (text -> label), 'multiple_choice' (question, choices, answer) or "
                                      "'qa' (question, context, answers: a short answer generated and scored by exact match / token F1).")
    source: SourceConfig = _f(None, "Where the task's records come from (split into train and test unless test_source is set).")
    test_source: SourceConfig | None = _f(None, "A separate test set (e.g. a benchmark's official test split).")
    train_test_overlap: Literal["error", "drop"] = _f("error", "With test_source: training examples whose text is in the test set are an 'error' or are 'drop'ped.")
    text_field: str = _f("text", "Input text field (classification).")
    label_field: str = _f("label", "Label field (classification).")
    question_field: str = _f("question", "Question field (multiple choice).")
    choices_field: Any = _f("choices", "List-of-choices field, or a list of fields holding one choice each (multiple choice).")
    answer_field: str = _f("answer", "Index of the right choice (multiple choice).")
    context_field: str = _f("context", "Passage the answer comes from (qa; may be absent for closed-book questions).")
    answers_field: str = _f("answers", "Accepted answers (qa): a string, a list of strings, or SQuAD's {text: [...]}.")
    max_answer_tokens: int = _f(32, "Tokens generated for a qa answer (greedy, stopped at end-of-text or a newline).")
    labels: list | None = _f(None, "Keep only these labels (default: all). Their order fixes the label ids.")
    verbalizers: dict | None = _f(None, "label -> words the model must produce (default: the label itself).")
    prompt: str = _f("{text}\nAnswer:", "Prompt template: {text} or {question} (truncated to max_prompt_tokens) and any other "
                                       "text field of the record, e.g. {title}.")
    max_prompt_tokens: int = _f(128, "Truncate the input text so the prompt fits this many tokens.")
    test_size: int = _f(100, "Test examples (stratified by label, chosen by a seeded hash).")
    train_size: int = _f(400, "Training examples (the rest after the test split, capped).")
    metric: str = _f("accuracy", "Main metric: accuracy or f1 (macro) for classification and multiple choice; "
                                 "token_f1 (the qa default) or exact_match for qa.")
    scoring: Literal["likelihood", "head"] = _f("likelihood", "Classification after fine-tuning: 'likelihood' (the verbaliser with the highest "
                                    "log-likelihood after the prompt) or 'head' (a classification head on the last "
                                    "token, or [CLS] for encoders, trained with the LoRA adapter). Zero-shot always "
                                    "uses likelihood: an untrained head has nothing to say.")
    lora_steps: int | None = _f(None, "LoRA optimizer steps for this task, the same for every model and seed (default: "
                                      "lora.steps): a task whose adapters still differ from seed to seed gets longer "
                                      "training without lengthening the others (choose it on a dev split: "
                                      "bench/finetune_stability.py). Only fine-tuning and later stages are redone.")
    lora_batch_size: int | None = _f(None, "Examples per LoRA step for this task (default: lora.batch_size).")

    def __post_init__(self):
        if not self.name:
            raise ValueError("name is required")
        check_choices(self)
        if self.type == "qa" and self.metric == "accuracy":
            self.metric = "token_f1"
        if self.source is None:
            raise ValueError("source is required")
        if self.scoring == "head" and self.type != "classification":
            raise ValueError("scoring must be 'likelihood' for a multiple_choice or qa task ('head' is for classification)")
        allowed = QA_METRICS if self.type == "qa" else ("accuracy", "f1")
        if self.metric not in allowed:
            raise ValueError(f"metric must be {' or '.join(allowed)} for a {self.type} task")
        if self.max_answer_tokens <= 0:
            raise ValueError("max_answer_tokens must be > 0")
        if self.test_size <= 0 or self.train_size <= 0 or self.max_prompt_tokens <= 0:
            raise ValueError("test_size, train_size and max_prompt_tokens must be > 0")
        if any(v is not None and v <= 0 for v in (self.lora_steps, self.lora_batch_size)):
            raise ValueError("lora_steps and lora_batch_size must be > 0 (or left out: lora.steps, lora.batch_size)")


@dataclass
class ModelConfig:
    base: str = _f(None, "General checkpoint: a local folder, a hub id, or a packaged model (smollm2-135m).")
    init: Literal["pretrained", "random"] = _f("pretrained", "'pretrained' weights, or 'random' (base's architecture, resized by config_overrides).")
    config_overrides: dict = _f({}, "Architecture overrides for init=random (hidden_size, num_hidden_layers, ...).")
    objective: Literal["auto", "clm", "mlm"] = _f("auto", "'clm', 'mlm', or 'auto' (mlm for encoder models, else clm).")
    trust_remote_code: bool = _f(False, "Run code shipped with a hub model. Off unless you trust its authors.")
    seed: int = _f(0, "Seed for init=random.")

    def __post_init__(self):
        if not self.base:
            raise ValueError("base is required")
        check_choices(self)


# Accelerate tracker name -> the module it needs.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim",
                   "clearml": "clearml", "dvclive": "dvclive"}


@dataclass
class TrainConfig:
    max_steps: int = _f(100, "Optimizer steps of continued pre-training.")
    batch_size: int = _f(8, "Blocks per process per micro-batch.")
    global_batch_size: int | None = _f(None, "Blocks per optimizer step over all processes. When set, each process's "
                                             "micro-batch is this / (processes x grad_accum) and batch_size is not used: "
                                             "the recipe then trains alike on 1 process or 8 (the demos set it).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    lr: float = _f(1e-4, "Peak learning rate (continued pre-training uses ~10x lower than from scratch).")
    min_lr_ratio: float = _f(0.1, "Final LR as a share of the peak (cosine/WSD).")
    warmup_steps: int = _f(10, "Linear re-warm-up steps (0 = start at the peak LR: no re-warming).")
    warmup_start_lr: float = _f(0.0, "LR the warm-up starts from: 0, or the base checkpoint's final LR to re-warm from where "
                                     "its pre-training ended (Ibrahim et al. 2024 compare both).")
    schedule: Literal["cosine", "wsd", "constant"] = _f("cosine", "'cosine', 'wsd' (warm-up, stable, decay) or 'constant'.")
    decay_share: float = _f(0.2, "WSD: share of steps spent decaying.")
    weight_decay: float = _f(0.1, "AdamW weight decay (not applied to norms and biases).")
    betas: list = _f([0.9, 0.95], "AdamW betas.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this (0 = off).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _f("auto", "'auto' (bf16 on GPU, fp32 on CPU), 'no', 'bf16' or 'fp16'.")
    gradient_checkpointing: bool = _f(False, "Recompute activations to save memory.")
    loss_chunk_tokens: int = _f(0, "Causal LMs: compute the loss this many tokens at a time without materialising all "
                                   "logits (domainpt/training/chunked_loss.py; e.g. 4096). 0: the model's own loss.")
    compile: bool = _f(False, "torch.compile the model (Module.compile: same weights, same checkpoint keys). For long GPU "
                              "runs; the first steps (and each new eval shape) pay the compile time.")
    whole_word_mask: bool = _f(False, "MLM (encoders): mask all pieces of a chosen word together instead of single tokens.")
    attention: Literal["sdpa", "eager", "flex_attention", "varlen", "flash_attention_2", "flash_attention_3"] = _f("sdpa", "Attention kernel: 'sdpa', 'eager', 'flex_attention' (GPU), 'varlen' (torch's variable-length "
                                "flash kernel on flattened batches, GPU, no extra package), 'flash_attention_2' or "
                                "'flash_attention_3' (the flash-attn packages, flattened batches). domainpt/training/attention.py.")
    doc_isolation: bool = _f(True, "Keep attention inside each document of a packed block (position ids reset per doc).")
    eval_every: int = _f(0, "Steps between held-out perplexity checks (0 = only at the end).")
    ppl_max_tokens: int = _f(4096, "Held-out tokens scored per kind (domain, general) at each check during training "
                                   "(eval.ppl_max_tokens is the same for the final evaluation). Formerly train.eval_tokens.")
    max_general_ppl_rise: float | None = _f(None, "Stop early when general perplexity rises above start x (1 + this).")
    save_every: int = _f(0, "Steps between checkpoints (0 = only at the end).")
    keep_last: int = _f(2, "Checkpoints kept.")
    on_bad_step: Literal["skip", "rollback", "stop"] = _f("skip", "When the loss or gradient norm is NaN/inf: 'skip' the update, 'rollback' to the last "
                                  "checkpoint and skip past the batches that caused it, or 'stop'.")
    max_bad_steps: int = _f(5, "Stop with an error after this many bad steps in a row.")
    log_every: int = _f(1, "Steps between progress-bar updates.")
    report_to: list = _f([], "Accelerate trackers that also get every metrics.jsonl line: tensorboard, wandb, mlflow, "
                             "comet_ml, aim, clearml, dvclive (each needs its package).")
    seed: int = _f(0, "Seed for data order and dropout.")

    def __post_init__(self):
        for k in ("max_steps", "batch_size", "grad_accum", "ppl_max_tokens", "keep_last", "log_every", "max_bad_steps"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        check_choices(self)
        if not 0 <= self.warmup_start_lr <= self.lr:
            raise ValueError("warmup_start_lr must be in [0, lr]")
        unknown = [t for t in self.report_to if t not in TRACKER_MODULES]
        if unknown:
            raise ValueError(f"report_to: unknown tracker {unknown[0]!r} (known: {', '.join(TRACKER_MODULES)})")
        for k in ("warmup_steps", "eval_every", "save_every", "weight_decay", "grad_clip", "loss_chunk_tokens"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ValueError("global_batch_size must be > 0 (or left out: batch_size per process)")

    def process_batch(self, processes: int) -> int:
        """Blocks per process per micro-batch on `processes` processes: batch_size, or global_batch_size shared out."""
        if self.global_batch_size is None:
            return self.batch_size
        per, rest = divmod(self.global_batch_size, processes * self.grad_accum)
        if rest or not per:
            raise DomainptError(f"train.global_batch_size={self.global_batch_size} does not split evenly over {processes} "
                                f"process(es) x grad_accum {self.grad_accum}: use a multiple of {processes * self.grad_accum}")
        return per


@dataclass
class TokenizerConfig:
    extend: bool = _f(False, "Add frequent domain words that the tokenizer splits into many pieces as new tokens "
                             "(mean-of-pieces init) before continued pre-training.")
    max_new_tokens: int = _f(500, "At most this many new tokens.")
    min_count: int = _f(20, "A word must occur at least this often in the sampled domain text.")
    min_pieces: int = _f(3, "A word must currently take at least this many tokens.")
    sample_docs: int = _f(20000, "Domain documents scanned for candidate words.")

    def __post_init__(self):
        if self.max_new_tokens <= 0 or self.min_count <= 0 or self.min_pieces < 2 or self.sample_docs <= 0:
            raise ValueError("need max_new_tokens, min_count, sample_docs > 0 and min_pieces >= 2")


@dataclass
class LoraConfig:
    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: Any = _f("all-linear", "Module names to adapt (a list), 'all-linear' (every linear layer but the "
                                          "output head), or a per-architecture preset: 'attention', 'mlp', 'attention+mlp' "
                                          "(domainpt/lora_targets.py).")
    steps: int = _f(50, "Optimizer steps per task, model and seed (identical for both models).")
    batch_size: int = _f(8, "Examples per step.")
    lr: float = _f(2e-4, "Learning rate (linear decay after 10% warm-up).")
    seeds: list = _f([0, 1, 2], "One fine-tuning run per seed, for both models.")
    mixed_precision: Literal["auto", "no", "bf16"] = _f("auto", "'auto' (bf16 autocast on GPU, fp32 on CPU), 'no' (fp32), or 'bf16' (autocast "
                                                      "on any device; on this project's 2-core CPU it was only 1.06-1.09x faster, "
                                                      "BENCHMARKS.md). The same for every model, so the comparison stays paired.")
    merge_export: bool = _f(False, "Also save every adapter merged into its base model (adapter's sibling merged/, safetensors), "
                                   "for serving without peft; one full model per task, model and seed.")
    train_new_tokens: bool = _f(False, "With tokenizer.extend: also train the new tokens' embedding rows during LoRA "
                                       "(peft trainable_token_indices; the general model has none).")
    quantize: Literal["none", "nf4", "int8"] = _f("none", "QLoRA: 'nf4' (4-bit NormalFloat, double quantisation, bf16 compute) or 'int8' loads both "
                               "base models quantised with bitsandbytes for fine-tuning and fine-tuned scoring; needs "
                               "`pip install 'domainpt[qlora]'` and a CUDA GPU (or a bitsandbytes with CPU kernels: 0.50 tested). "
                               "'none' trains on the full-precision weights.")

    def __post_init__(self):
        if self.r <= 0 or self.steps <= 0 or self.batch_size <= 0 or not self.seeds:
            raise ValueError("r, steps, batch_size must be > 0 and seeds non-empty")
        if len(set(map(str, self.seeds))) != len(self.seeds):  # one fine-tuning job (and adapter folder) per seed
            raise ValueError(f"seeds must not repeat a seed, got {self.seeds}")
        check_choices(self)
        if self.quantize != "none" and self.merge_export:
            raise ValueError("merge_export with quantize: merging into quantised weights loses the adapter's precision; "
                             "export from a full-precision run")

    def for_task(self, task) -> "LoraConfig":
        """These settings with the task's own steps and batch size where it sets them."""
        return dataclasses.replace(self, steps=task.lora_steps or self.steps, batch_size=task.lora_batch_size or self.batch_size)


@dataclass
class EvalConfig:
    ppl_window: int = _f(512, "Sliding-window length for perplexity.")
    ppl_stride: int = _f(256, "Sliding-window stride (tokens scored per window after the first).")
    ppl_max_tokens: int = _f(20000, "Held-out tokens scored per kind (domain, general).")
    zero_shot: bool = _f(True, "Score both base models on every task before fine-tuning.")
    few_shot: int = _f(0, "Training examples (prompt + answer) shown before each test prompt in that scoring before "
                          "fine-tuning: 0 = zero-shot, k = k-shot; the same examples for both models.")
    zero_shot_end_of_text: bool = _f(False, "In scoring before fine-tuning, score each choice followed by the end-of-text "
                                            "token (as after LoRA, which learns to emit it). Off by default, as "
                                            "lm-evaluation-harness scores a choice alone; but then a choice whose tokens "
                                            "are a prefix of another's (' Copyleft' of ' Copyleft Limited') always wins "
                                            "over it, and prepare says so.")
    batch_size: int = _f(8, "Sequences per forward pass.")
    precision: Literal["float32", "bfloat16", "auto"] = _f("float32", "Weights' dtype for task scoring (before and after "
                                                   "fine-tuning, every model alike). bfloat16 scores about twice as fast on a CPU "
                                                   "with bf16 instructions and changes a few % of predictions (BENCHMARKS.md), "
                                                   "but a CPU without them (AVX2 only) emulates it, 5.7x slower than float32: "
                                                   "'auto' takes bfloat16 where the device computes it natively (a GPU with "
                                                   "bf16, a CPU with oneDNN's bf16 kernels), else float32; the evaluate "
                                                   "manifest records the choice. Perplexity, bits per byte and harness tasks "
                                                   "stay float32; a quantised base (lora.quantize) computes in bf16 either way.")
    zero_shot_convention: Literal["domainpt", "lm-eval"] = _f("domainpt", "How scoring before fine-tuning reads a choice: 'domainpt' (a BOS token before "
                                               "the prompt; acc_norm per UTF-8 byte of the choice) or 'lm-eval' (no BOS, "
                                               "acc_norm per character of the choice, as lm-evaluation-harness does: "
                                               "numbers comparable with papers). Adapters are always scored as trained.")
    harness_tasks: list[str] = _f([], "lm-evaluation-harness tasks or groups (e.g. pubmedqa, medmcqa, mmlu_clinical_knowledge) "
                                      "scored for every model and compared like domainpt's tasks; needs "
                                      "`pip install 'domainpt[harness]'`.")
    harness_include: str | None = _f(None, "A folder of lm-eval task YAMLs (local or private tasks) added to lm-eval's own.")
    harness_fewshot: int | None = _f(None, "Few-shot examples for harness tasks (default: each task's own, as `lm_eval` does).")
    harness_limit: int | None = _f(None, "Score only the first N documents of each harness task (for quick checks: the "
                                         "numbers are then not comparable with published ones).")
    forgetting_tasks: list[str] = _f([], "General lm-eval tasks (e.g. arc_easy, hellaswag, piqa, winogrande) reported in the "
                                         "forgetting line beside general bits per byte (Ibrahim et al. 2024).")

    def __post_init__(self):
        check_choices(self)
        if (self.harness_fewshot is not None and self.harness_fewshot < 0) or \
                (self.harness_limit is not None and self.harness_limit < 2):
            raise ValueError("need harness_fewshot >= 0 and harness_limit >= 2 (a paired interval needs two documents)")
        if not all(isinstance(t, str) and t.strip() for t in self.harness_tasks + self.forgetting_tasks):
            raise ValueError("harness_tasks and forgetting_tasks must be lists of lm-eval task names")
        if not 0 < self.ppl_stride <= self.ppl_window:
            raise ValueError("need 0 < ppl_stride <= ppl_window")
        if self.few_shot < 0:
            raise ValueError("few_shot must be >= 0")


@dataclass
class ReportConfig:
    bootstrap_samples: int = _f(2000, "Bootstrap resamples for the held-out perplexity and bits-per-byte intervals (over documents); "
                                      "task comparisons use an analytic seeds x items analysis (report/stats.py).")
    confidence: float = _f(0.95, "Interval confidence level.")
    target_difference: float = _f(0.05, "The task difference (a share: 0.05 = 5 points) the report plans for: where a "
                                        "comparison cannot detect it, how many seeds (or test items) would, from the "
                                        "run's own variance components.")
    gpu: str = _f("H100", "GPU used for the GPU-hour estimate when the run was on CPU (and by --dry-run).")
    assumed_mfu: float = _f(0.25, "Model-FLOPs utilisation assumed by --dry-run's GPU-hour estimate "
                                  "(0.20-0.24 measured on one H100 for a 0.5B Llama, BENCHMARKS.md).")

    def __post_init__(self):
        if not 0 < self.assumed_mfu <= 1 or not 0 < self.confidence < 1 or self.bootstrap_samples < 100:
            raise ValueError("need 0 < assumed_mfu <= 1, 0 < confidence < 1 and bootstrap_samples >= 100")
        if not 0 < self.target_difference < 1:
            raise ValueError("target_difference must be in (0, 1): a share, 0.05 = 5 points")


@dataclass
class CompareConfig:
    control: Literal["none", "continued_general"] = _f("none", "Control arm: 'continued_general' also continues the general model on general text only "
                              "(the non-domain documents left after prepare), with the domain pre-training's steps, "
                              "tokens per step, schedule, learning rate and seed, then fine-tunes and scores it like the "
                              "other two models: the control of Gururangan et al. 2020 (Don't Stop Pretraining, "
                              "¬DAPT), which separates domain adaptation from the effect of more training of any kind. "
                              "'none': only the general and the domain model.")

    def __post_init__(self):
        check_choices(self)


@dataclass
class Recipe:
    name: str = _f(None, "Run name.")
    domain: str = _f(None, "Domain label (medical, legal, financial, ...).")
    out_dir: str = _f(None, "Where every stage writes (relative paths are relative to the working directory).")
    model: ModelConfig = _f(None, "The general checkpoint.")
    data: DataConfig = _f(None, "Corpora and the prepare pipeline.")
    tasks: list = _f([], "Domain tasks for fine-tuning and evaluation.")
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={"help": "Optional vocabulary extension."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Continued pre-training."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA fine-tuning."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "Comparison report."})
    compare: CompareConfig = field(default_factory=CompareConfig, metadata={"help": "What the domain model is compared with."})

    def __post_init__(self):
        for k in ("name", "domain", "out_dir", "model", "data"):
            if getattr(self, k) in (None, ""):
                raise ValueError(f"missing required key '{k}'")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        if self.compare.control != "none" and not self.data.general:
            raise ValueError(f"compare.control={self.compare.control} trains on general text: it needs data.general sources")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, sections: tuple[str, ...]) -> str:
        """Stable hash of some sections, counting only values that differ from the defaults: a finished
        stage stays valid when a newer domainpt adds keys with defaults."""
        d = {k: _non_default(getattr(self, k)) for k in sections}
        d = {k: v for k, v in d.items() if not (k in _LATER_SECTIONS and v == {})}
        for (section, old), new in RENAMED_KEYS.items():
            if new in d.get(section, {}):
                d[section][old] = d[section].pop(new)
        for section, key in _NOT_FINGERPRINTED:
            if isinstance(d.get(section), dict):
                d[section].pop(key, None)
        if "lora" not in sections:  # a task's own LoRA budget matters from fine-tuning on, not to prepare or pretrain
            for task in d.get("tasks", []):
                for key in TASK_LORA_KEYS:
                    task.pop(key, None)
        ec = self.eval
        if "data" in sections and (ec.harness_tasks or ec.forgetting_tasks):  # prepare decontaminates against them
            d["harness_decontam"] = [ec.harness_tasks, ec.forgetting_tasks, ec.harness_include, ec.harness_limit,
                                     _folder_digest(ec.harness_include)]  # an edited local task redoes the run
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _folder_digest(folder: str | None) -> str | None:
    """SHA-256 over a folder's files (names and bytes): local lm-eval task YAMLs and the data beside them."""
    if not folder or not Path(folder).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# Sections added after the first release: left at their defaults they do not change a run's fingerprint.
_LATER_SECTIONS = {"tokenizer", "compare"}
# Keys renamed after a release: the old name still reads (with a warning), and the fingerprint hashes the value
# under the old name, so a run finished before the rename is still finished.
RENAMED_KEYS = {("train", "eval_tokens"): "ppl_max_tokens"}
# Keys that change how a stage runs but not what it produces.
_NOT_FINGERPRINTED = {("data", "num_proc")}
# A task's keys that only fine-tuning reads (the fingerprints of earlier stages leave them out).
TASK_LORA_KEYS = ("lora_steps", "lora_batch_size")


def _non_default(obj):
    if isinstance(obj, list):
        return [_non_default(x) for x in obj]
    if not dataclasses.is_dataclass(obj):
        return obj
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if dataclasses.is_dataclass(v) or isinstance(v, list):
            v = _non_default(v)
            if dataclasses.is_dataclass(default):
                default = _non_default(default)
        if v != default:
            out[f.name] = v
    return out


# Lists whose items are dataclasses (everything else follows the type hints).
_LIST_ITEMS = {("data", "domain"): SourceConfig, ("data", "general"): SourceConfig, ("tasks",): TaskConfig}


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Literal:  # the value is checked by the dataclass (check_choices), with the allowed values in its error
        return isinstance(value, tuple({type(a) for a in typing.get_args(hint)}))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def _build(cls, data: Any, where: tuple[str, ...]):
    """Build dataclass `cls` from a dict; raise ValueError('key: why') naming the dotted key."""
    dotted = ".".join(where) or "<top>"
    if not isinstance(data, dict):
        raise ValueError(f"{dotted}: expected a mapping, got {type(data).__name__}")
    data = _renamed(data, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key '{'.'.join(where + (unknown[0],))}'")
    kwargs = {}
    for name, value in data.items():
        key = where + (name,)
        hint = hints[name]
        item_cls = _LIST_ITEMS.get(tuple(k for k in key if not k.isdigit()))
        if item_cls is not None:
            if not isinstance(value, list):
                raise ValueError(f"{'.'.join(key)}: expected a list")
            value = [_build(item_cls, v, key + (str(i),)) for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(hint) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            value = _build(hint, value, key)
        elif name in ("source", "test_source") and cls is TaskConfig and value is not None:
            value = _build(SourceConfig, value, key)
        elif not _type_ok(value, hint):
            expected = f"one of {', '.join(map(str, choices_of(hint)))}" if choices_of(hint) else getattr(hint, '__name__', hint)
            raise ValueError(f"{'.'.join(key)}: expected {expected}, got {type(value).__name__} {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{dotted}: {e}") from None
    except TypeError as e:  # a required field left out
        raise ValueError(f"{dotted}: {e}") from None


def _renamed(data: dict, where: tuple[str, ...]) -> dict:
    """`data` with renamed keys (RENAMED_KEYS) under their new names; both names at once is an error."""
    for (section, old), new in RENAMED_KEYS.items():
        if where == (section,) and old in data:
            if new in data:
                raise ValueError(f"{section}.{old} is the old name of {section}.{new}: give only {section}.{new}")
            warnings.warn(f"recipe key {section}.{old} is now {section}.{new} (the old name still works)", FutureWarning,
                          stacklevel=2)
            data = {(new if k == old else k): v for k, v in data.items()}
    return data


def apply_override(raw: dict, assignment: str) -> None:
    """Apply `a.b.c=value` to a raw recipe dict; the value is parsed as YAML (so 20 is an int)."""
    if "=" not in assignment:
        raise DomainptError(f"override '{assignment}' is not of the form key=value")
    key, _, text = assignment.partition("=")
    value = yaml.safe_load(text) if text.strip() else None
    node = raw
    parts = key.strip().split(".")
    old_name = parts[-1] if len(parts) == 2 and tuple(parts) in RENAMED_KEYS else None
    if old_name:  # an old name on the command line sets the new key
        parts = [parts[0], RENAMED_KEYS[tuple(parts)]]
        warnings.warn(f"override {key.strip()} is now {'.'.join(parts)} (the old name still works)", FutureWarning,
                      stacklevel=2)
    for p in parts[:-1]:
        if isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
            continue
        if not isinstance(node, dict):
            raise DomainptError(f"override '{assignment}': '{p}' is not a section")
        node = node.setdefault(p, {})
    if old_name and isinstance(node, dict):
        node.pop(old_name, None)  # the recipe may still spell it the old way: the override replaces that value
    node[parts[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] | tuple = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise DomainptError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DomainptError(f"{path}:{where} not valid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise DomainptError(f"{path}: a recipe must be a YAML mapping")
    for o in overrides:
        apply_override(raw, o)
    try:
        return _build(Recipe, raw, ())
    except ValueError as e:
        raise DomainptError(f"{path}: {e}") from None


def field_docs(cls=Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, for the README and `domainpt keys`."""
    rows = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += field_docs(hint, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = choices_of(hint)
        help_ = f.metadata.get("help", "") + (f" One of: {', '.join(map(str, allowed))}." if allowed else "")
        rows.append((key, json.dumps(default), help_))
    return rows
