"""Recipes: one YAML file per run, parsed into the dataclasses below.

    cfg = load_recipe("recipes/demo/legal.yaml", ["train.max_steps=20"])

Each field's `help` is the one place its meaning is documented (docs/keys.md and `domainpt keys` are generated from it).
Unknown keys, wrong types and impossible values are errors that name the recipe file and the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from domainpt.errors import DomainptError
from domainpt.flops import PEAK_FLOPS


QA_METRICS = ("exact_match", "token_f1")  # qa tasks: scored per example on generated answers
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a task's name: a folder and a part of job ids
RESERVED_NAMES = ("jobs",)  # folders a stage keeps beside its tasks' (finetune/jobs/: the job markers)


def _f(default: Any, help: str, **checks) -> Any:
    """A dataclass field carrying its documentation and its own rules, the one place both are written: `gt`, `ge`,
    `lt`, `le` (bounds of a number), `nonempty` (a string or list with something in it), `unique` (a list without
    repeats), `among` (the allowed values of a string or of a list's items). check_fields enforces them, `domainpt
    keys` shows them and the recipe fuzzer (tests/test_recipe_fuzz.py) generates values from them."""
    meta = {"help": help, "checks": checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


BOUNDS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b), "lt": ("<", lambda v, b: v < b),
          "le": ("<=", lambda v, b: v <= b)}


def rule_text(checks: dict) -> str:
    """A field's rules in words: 'must be > 0', 'must not repeat an item', ..."""
    parts = [f"{BOUNDS[k][0]} {v}" for k, v in checks.items() if k in BOUNDS]
    words = [f"must be {' and '.join(parts)}"] if parts else []
    if checks.get("nonempty"):
        words.append("must not be empty")
    if checks.get("unique"):
        words.append("must not repeat an item")
    if "among" in checks:
        words.append(f"must be among {', '.join(map(str, checks['among']))}")
    return "; ".join(words)


def check_fields(obj) -> None:
    """Every field's own rules (its _f checks and its Literal values); an error says 'key: why' with the value."""
    check_choices(obj)
    for f in dataclasses.fields(obj):
        value, checks = getattr(obj, f.name), f.metadata.get("checks", {})
        if value is None or not checks:
            continue
        bounds = [(op, b) for op, b in checks.items() if op in BOUNDS]
        if isinstance(value, (int, float)) and not all(BOUNDS[op][1](value, b) for op, b in bounds):
            rule = " and ".join(f"{BOUNDS[op][0]} {b}" for op, b in bounds)
            raise ValueError(f"{f.name}: must be {rule}, got {value!r}")
        if checks.get("nonempty") and not (value.strip() if isinstance(value, str) else value):
            raise ValueError(f"{f.name}: must not be empty")
        items = value if isinstance(value, list) else [value]
        if checks.get("unique") and len({json.dumps(v, sort_keys=True) for v in items}) != len(items):
            repeated = next(v for i, v in enumerate(items) if v in items[:i])
            raise ValueError(f"{f.name}: must not repeat an item, got {repeated!r} twice in {value}")
        if "among" in checks and (bad := [v for v in items if v not in checks["among"]]):
            raise ValueError(f"{f.name}: {bad[0]!r} is not one of {', '.join(map(str, checks['among']))}")


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
            raise ValueError(f"{name}: must be one of {', '.join(map(str, allowed))}, got {value!r}")


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
    text_field: str = _f("text", "Record field holding the document text ('a.b' for nested fields; a list of strings is joined).",
                         nonempty=True)
    name: str | None = _f(None, "Short name used in stats and cards (default: derived from the source).")
    licence: str | None = _f(None, "Licence as you declare it; copied into the data card.")
    weight: float = _f(1.0, "Relative token weight when several domain sources are mixed.", gt=0)
    max_docs: int | None = _f(None, "Read at most this many documents (after bad records are skipped).", gt=0)
    filter: dict = _f({}, "Keep only records whose fields have these values, e.g. {topic: business} or {topic: [a, b]}.")

    def __post_init__(self):
        given = [k for k in ("path", "builtin", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("exactly one of path, builtin, hf must be set")
        if self.revision is not None and not (self.hf and self.revision.strip()):
            raise ValueError("revision: applies only to an `hf` source, and must not be empty")
        check_fields(self)
        if self.name is None:
            self.name = Path(self.path).stem if self.path else (self.builtin or self.hf).replace("/", "_")


@dataclass
class CleanConfig:
    enabled: bool = _f(True, "Run the cleaning filters at all.")
    normalize_unicode: bool = _f(True, "NFC-normalise text.")
    collapse_whitespace: bool = _f(True, "Collapse runs of spaces/tabs and of 3+ newlines.")
    min_chars: int = _f(200, "Drop documents shorter than this (characters, after cleaning).", ge=0)
    max_chars: int = _f(1_000_000, "Drop documents longer than this (a runaway file is not a document).", gt=0)
    max_symbol_ratio: float = _f(0.3, "Drop documents whose share of non-alphanumeric, non-space characters is above this.",
                                 ge=0, le=1)
    max_repeated_line_ratio: float = _f(0.5, "Drop documents whose share of duplicated lines is above this.", ge=0, le=1)

    def __post_init__(self):
        check_fields(self)
        if self.min_chars >= self.max_chars:
            raise ValueError(f"max_chars: must be > min_chars ({self.min_chars}), got {self.max_chars}")


@dataclass
class DedupConfig:
    exact: bool = _f(True, "Drop documents whose normalised text hash was already seen.")
    near: bool = _f(True, "Drop near-duplicates found with MinHash LSH (datasketch).")
    threshold: float = _f(0.8, "Estimated Jaccard similarity of word 5-gram sets above which documents are near-duplicates.",
                          gt=0, le=1)
    num_perm: int = _f(128, "MinHash permutations: more is more precise and slower.", ge=2)
    shingle_words: int = _f(5, "Words per shingle.", ge=1)

    def __post_init__(self):
        check_fields(self)


PII_TYPES = ("email", "phone", "ssn", "credit_card", "iban", "ip")  # what data/pii.py can find


@dataclass
class PIIConfig:
    enabled: bool = _f(True, "Replace e-mails, phone numbers, SSNs, card numbers, IBANs and IPs with typed placeholders.")
    types: list[str] = _f(["email", "phone", "ssn", "credit_card", "iban", "ip"], "Which PII types to replace.",
                          unique=True, among=PII_TYPES)

    def __post_init__(self):
        check_fields(self)


@dataclass
class DecontamConfig:
    enabled: bool = _f(True, "Check training documents against every evaluation text (held-out text, task test sets).")
    ngram: int = _f(13, "n-gram length: words against task test texts (13 is the usual choice: GPT-3, Llama reports), "
                        "tokens against the held-out perplexity text.", ge=1)
    action: Literal["drop", "report"] = _f("drop", "'drop' contaminated training documents or only 'report' them.")

    def __post_init__(self):
        check_fields(self)


@dataclass
class ReadingComprehensionConfig:
    share: float = _f(1.0, "Share of domain training documents that get exercises (a seeded coin per document).", gt=0, le=1)
    max_per_kind: int = _f(2, "Exercises per kind and document, at most (six kinds: title, word_to_text, nli, commonsense, "
                              "paraphrase, completion).", ge=1)
    max_chars: int = _f(20000, "Characters of each document searched for exercises (sentence splitting is the cost).",
                        ge=100)
    keywords: int = _f(100, "Domain keywords for word_to_text: the words the domain uses far more than general text.", ge=1)
    sample_docs: int = _f(2000, "Documents of each kind (the first ones read) the keywords are computed from.", ge=1)
    seed: int = _f(0, "Seed for which documents are transformed and which exercises are kept.")

    def __post_init__(self):
        check_fields(self)


@dataclass
class DataConfig:
    domain: list = _f([], "Domain corpora for continued pre-training (list of sources).", nonempty=True)
    general: list = _f([], "General text: held-out part measures forgetting, the rest is replay data.")
    replay_share: float = _f(0.1, "Share of pre-training tokens drawn from general text (replay curbs forgetting).",
                             ge=0, lt=1)
    heldout_docs: int = _f(20, "Documents of each kind (domain, general) held out for perplexity; never trained on.", ge=1)
    seq_len: int = _f(512, "Tokens per packed training block.", ge=8)
    seed: int = _f(0, "Seed for splits and shuffles in prepare.")
    num_proc: int = _f(1, "Processes `prepare` runs on this machine (one shard each: read, clean, scrub, MinHash, tokenize). "
                          "The output is byte-identical for any value, so it is not part of the run's fingerprint.", ge=1)
    max_bad_share: float = _f(0.01, "Bad records (broken lines, invalid UTF-8, missing field) are skipped and counted; "
                                    "more than this share of a source stops prepare with an error.", ge=0, le=1)
    max_record_mb: int = _f(64, "A record larger than this is a bad record (a runaway file is not a document).", gt=0)
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
        check_fields(self)
        if self.replay_share > 0 and not self.general:
            raise ValueError(f"replay_share: {self.replay_share} needs general sources (data.general), or set it to 0")


@dataclass
class TaskConfig:
    name: str = _f(None, "Task name used in results and reports.", nonempty=True)
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
    max_answer_tokens: int = _f(32, "Tokens generated for a qa answer (greedy, stopped at end-of-text or a newline).", gt=0)
    labels: list[str] | None = _f(None, "Keep only these labels (default: all). Their order fixes the label ids.",
                                  nonempty=True, unique=True)
    verbalizers: dict[str, str] | None = _f(None, "label -> words the model must produce (default: the label itself).")
    prompt: str = _f("{text}\nAnswer:", "Prompt template: {text} or {question} (truncated to max_prompt_tokens) and any other "
                                       "text field of the record, e.g. {title}.")
    max_prompt_tokens: int = _f(128, "Truncate the input text so the prompt fits this many tokens.", gt=0)
    test_size: int = _f(100, "Test examples (stratified by label, chosen by a seeded hash).", gt=0)
    train_size: int = _f(400, "Training examples (the rest after the test split, capped).", gt=0)
    metric: str = _f("accuracy", "Main metric: accuracy or f1 (macro) for classification and multiple choice; "
                                 "token_f1 (the qa default) or exact_match for qa.")
    scoring: Literal["likelihood", "head"] = _f("likelihood", "Classification after fine-tuning: 'likelihood' (the verbaliser with the highest "
                                    "log-likelihood after the prompt) or 'head' (a classification head on the last "
                                    "token, or [CLS] for encoders, trained with the LoRA adapter). Zero-shot always "
                                    "uses likelihood: an untrained head has nothing to say.")
    lora_steps: int | None = _f(None, "LoRA optimizer steps for this task, the same for every model and seed (default: "
                                      "lora.steps): a task whose adapters still differ from seed to seed gets longer "
                                      "training without lengthening the others (choose it on a dev split: "
                                      "bench/finetune_stability.py). Only fine-tuning and later stages are redone.", gt=0)
    lora_batch_size: int | None = _f(None, "Examples per LoRA step for this task (default: lora.batch_size).", gt=0)

    def __post_init__(self):
        if self.name is None:
            raise ValueError("name: is required")
        check_fields(self)
        if not SAFE_NAME.fullmatch(self.name) or self.name in RESERVED_NAMES:
            raise ValueError(f"name: {self.name!r} names folders and job ids: use letters, digits, '.', '_' and '-' only, "
                             f"and not {', '.join(RESERVED_NAMES)}")
        if self.type == "qa" and self.metric == "accuracy":
            self.metric = "token_f1"
        if self.source is None:
            raise ValueError("source: is required")
        if self.scoring == "head" and self.type != "classification":
            raise ValueError("scoring: must be 'likelihood' for a multiple_choice or qa task ('head' is for classification)")
        allowed = QA_METRICS if self.type == "qa" else ("accuracy", "f1")
        if self.metric not in allowed:
            raise ValueError(f"metric: must be {' or '.join(allowed)} for a {self.type} task, got {self.metric!r}")
        self._check_labels()
        self._check_prompt()

    def _check_labels(self) -> None:
        """Labels are the choices: none empty (or a repeat: unique), and a verbaliser only for a label the task has."""
        if self.labels is not None and not all(label.strip() for label in self.labels):
            raise ValueError(f"labels: must not hold an empty label, got {self.labels}")
        for label, words in (self.verbalizers or {}).items():
            if not (isinstance(words, str) and words.strip()):
                raise ValueError(f"verbalizers: {label!r} must map to the words the model produces, got {words!r}")
            if self.labels is not None and label not in self.labels:
                raise ValueError(f"verbalizers: {label!r} is not one of the task's labels ({', '.join(self.labels)})")
        if self.labels and self.verbalizers and (missing := [l for l in self.labels if l not in self.verbalizers]):
            raise ValueError(f"verbalizers: labels {missing} have no entry (every label needs its words)")

    def _check_prompt(self) -> None:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt) if name is not None]
        except ValueError as e:  # an unmatched brace
            raise ValueError(f"prompt: not a template ({e}): write fields as {{text}}, a literal brace as {{{{") from None
        if not any(fields):
            raise ValueError(f"prompt: {self.prompt!r} has no {{field}} (e.g. {{text}}): every item would read the same prompt")


@dataclass
class ModelConfig:
    base: str = _f(None, "General checkpoint: a local folder, a hub id, or a packaged model (smollm2-135m).", nonempty=True)
    init: Literal["pretrained", "random"] = _f("pretrained", "'pretrained' weights, or 'random' (base's architecture, resized by config_overrides).")
    config_overrides: dict = _f({}, "Architecture overrides for init=random (hidden_size, num_hidden_layers, ...).")
    objective: Literal["auto", "clm", "mlm"] = _f("auto", "'clm', 'mlm', or 'auto' (mlm for encoder models, else clm).")
    trust_remote_code: bool = _f(False, "Run code shipped with a hub model. Off unless you trust its authors.")
    seed: int = _f(0, "Seed for init=random.")

    def __post_init__(self):
        if self.base is None:
            raise ValueError("base: is required")
        check_fields(self)


# Accelerate tracker name -> the module it needs.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim",
                   "clearml": "clearml", "dvclive": "dvclive"}


@dataclass
class TrainConfig:
    max_steps: int = _f(100, "Optimizer steps of continued pre-training.", gt=0)
    batch_size: int = _f(8, "Blocks per process per micro-batch.", gt=0)
    global_batch_size: int | None = _f(None, "Blocks per optimizer step over all processes. When set, each process's "
                                             "micro-batch is this / (processes x grad_accum) and batch_size is not used: "
                                             "the recipe then trains alike on 1 process or 8 (the demos set it).", gt=0)
    grad_accum: int = _f(1, "Micro-batches per optimizer step.", gt=0)
    lr: float = _f(1e-4, "Peak learning rate (continued pre-training uses ~10x lower than from scratch).", gt=0)
    min_lr_ratio: float = _f(0.1, "Final LR as a share of the peak (cosine/WSD).", ge=0, le=1)
    warmup_steps: int = _f(10, "Linear re-warm-up steps (0 = start at the peak LR: no re-warming).", ge=0)
    warmup_start_lr: float = _f(0.0, "LR the warm-up starts from: 0, or the base checkpoint's final LR to re-warm from where "
                                     "its pre-training ended (Ibrahim et al. 2024 compare both).", ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = _f("cosine", "'cosine', 'wsd' (warm-up, stable, decay) or 'constant'.")
    decay_share: float = _f(0.2, "WSD: share of steps spent decaying.", ge=0, le=1)
    weight_decay: float = _f(0.1, "AdamW weight decay (not applied to norms and biases).", ge=0)
    betas: list[float] = _f([0.9, 0.95], "AdamW betas.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this (0 = off).", ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _f("auto", "'auto' (bf16 on GPU, fp32 on CPU), 'no', 'bf16' or 'fp16'.")
    gradient_checkpointing: bool = _f(False, "Recompute activations to save memory.")
    loss_chunk_tokens: int = _f(0, "Causal LMs: compute the loss this many tokens at a time without materialising all "
                                   "logits (domainpt/training/chunked_loss.py; e.g. 4096). 0: the model's own loss.", ge=0)
    compile: bool = _f(False, "torch.compile the model (Module.compile: same weights, same checkpoint keys). For long GPU "
                              "runs; the first steps (and each new eval shape) pay the compile time.")
    whole_word_mask: bool = _f(False, "MLM (encoders): mask all pieces of a chosen word together instead of single tokens.")
    attention: Literal["sdpa", "eager", "flex_attention", "varlen", "flash_attention_2", "flash_attention_3"] = _f("sdpa", "Attention kernel: 'sdpa', 'eager', 'flex_attention' (GPU), 'varlen' (torch's variable-length "
                                "flash kernel on flattened batches, GPU, no extra package), 'flash_attention_2' or "
                                "'flash_attention_3' (the flash-attn packages, flattened batches). domainpt/training/attention.py.")
    doc_isolation: bool = _f(True, "Keep attention inside each document of a packed block (position ids reset per doc).")
    eval_every: int = _f(0, "Steps between held-out perplexity checks (0 = only at the end).", ge=0)
    ppl_max_tokens: int = _f(4096, "Held-out tokens scored per kind (domain, general) at each check during training "
                                   "(eval.ppl_max_tokens is the same for the final evaluation). Formerly train.eval_tokens.", gt=0)
    max_general_ppl_rise: float | None = _f(None, "Stop early when general perplexity rises above start x (1 + this).", gt=0)
    save_every: int = _f(0, "Steps between checkpoints (0 = only at the end).", ge=0)
    keep_last: int = _f(2, "Checkpoints kept.", gt=0)
    on_bad_step: Literal["skip", "rollback", "stop"] = _f("skip", "When the loss or gradient norm is NaN/inf: 'skip' the update, 'rollback' to the last "
                                  "checkpoint and skip past the batches that caused it, or 'stop'.")
    max_bad_steps: int = _f(5, "Stop with an error after this many bad steps in a row.", gt=0)
    log_every: int = _f(1, "Steps between progress-bar updates.", gt=0)
    report_to: list[str] = _f([], "Accelerate trackers that also get every metrics.jsonl line: tensorboard, wandb, mlflow, "
                             "comet_ml, aim, clearml, dvclive (each needs its package).", unique=True, among=tuple(TRACKER_MODULES))
    seed: int = _f(0, "Seed for data order and dropout.")

    def __post_init__(self):
        check_fields(self)
        if self.warmup_start_lr > self.lr:
            raise ValueError(f"warmup_start_lr: must be <= lr ({self.lr}), got {self.warmup_start_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: must be two numbers in [0, 1), got {self.betas}")

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
    max_new_tokens: int = _f(500, "At most this many new tokens.", gt=0)
    min_count: int = _f(20, "A word must occur at least this often in the sampled domain text.", gt=0)
    min_pieces: int = _f(3, "A word must currently take at least this many tokens.", ge=2)
    sample_docs: int = _f(20000, "Domain documents scanned for candidate words.", gt=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class LoraConfig:
    r: int = _f(8, "LoRA rank.", gt=0)
    alpha: int = _f(16, "LoRA alpha (scale = alpha / r).", gt=0)
    dropout: float = _f(0.05, "LoRA dropout.", ge=0, lt=1)
    target_modules: Any = _f("all-linear", "Module names to adapt (a list), 'all-linear' (every linear layer but the "
                                          "output head), or a per-architecture preset: 'attention', 'mlp', 'attention+mlp' "
                                          "(domainpt/lora_targets.py).")
    steps: int = _f(50, "Optimizer steps per task, model and seed (identical for both models).", gt=0)
    batch_size: int = _f(8, "Examples per step.", gt=0)
    lr: float = _f(2e-4, "Learning rate (linear decay after 10% warm-up).", gt=0)
    seeds: list[int] = _f([0, 1, 2], "One fine-tuning run per seed, for both models.", nonempty=True, unique=True)
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
        check_fields(self)  # seeds unique: one fine-tuning job (and adapter folder) per seed
        if not (isinstance(self.target_modules, str) and self.target_modules.strip()) and not (
                isinstance(self.target_modules, list) and self.target_modules
                and all(isinstance(m, str) and m.strip() for m in self.target_modules)):
            raise ValueError(f"target_modules: must be a preset name or a non-empty list of module names, got {self.target_modules!r}")
        if self.quantize != "none" and self.merge_export:
            raise ValueError("merge_export: merging into quantised weights (lora.quantize) loses the adapter's precision; "
                             "export from a full-precision run")

    def for_task(self, task) -> "LoraConfig":
        """These settings with the task's own steps and batch size where it sets them."""
        return dataclasses.replace(self, steps=task.lora_steps or self.steps, batch_size=task.lora_batch_size or self.batch_size)


@dataclass
class EvalConfig:
    ppl_window: int = _f(512, "Sliding-window length for perplexity.", gt=0)
    ppl_stride: int = _f(256, "Sliding-window stride (tokens scored per window after the first).", gt=0)
    ppl_max_tokens: int = _f(20000, "Held-out tokens scored per kind (domain, general).", gt=0)
    zero_shot: bool = _f(True, "Score both base models on every task before fine-tuning.")
    few_shot: int = _f(0, "Training examples (prompt + answer) shown before each test prompt in that scoring before "
                          "fine-tuning: 0 = zero-shot, k = k-shot; the same examples for both models.", ge=0)
    zero_shot_end_of_text: bool = _f(False, "In scoring before fine-tuning, score each choice followed by the end-of-text "
                                            "token (as after LoRA, which learns to emit it). Off by default, as "
                                            "lm-evaluation-harness scores a choice alone; but then a choice whose tokens "
                                            "are a prefix of another's (' Copyleft' of ' Copyleft Limited') always wins "
                                            "over it, and prepare says so.")
    batch_size: int = _f(8, "Sequences per forward pass.", gt=0)
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
                                      "`pip install 'domainpt[harness]'`.", unique=True)
    harness_include: str | None = _f(None, "A folder of lm-eval task YAMLs (local or private tasks) added to lm-eval's own.")
    harness_fewshot: int | None = _f(None, "Few-shot examples for harness tasks (default: each task's own, as `lm_eval` does).",
                                     ge=0)
    harness_limit: int | None = _f(None, "Score only the first N documents of each harness task (for quick checks: the "
                                         "numbers are then not comparable with published ones).", ge=2)
    forgetting_tasks: list[str] = _f([], "General lm-eval tasks (e.g. arc_easy, hellaswag, piqa, winogrande) reported in the "
                                         "forgetting line beside general bits per byte (Ibrahim et al. 2024).", unique=True)

    def __post_init__(self):
        check_fields(self)  # harness_limit >= 2: a paired interval needs two documents
        for key in ("harness_tasks", "forgetting_tasks"):
            if not all(t.strip() for t in getattr(self, key)):
                raise ValueError(f"{key}: must be lm-eval task names, got {getattr(self, key)}")
        if self.ppl_stride > self.ppl_window:
            raise ValueError(f"ppl_stride: must be <= ppl_window ({self.ppl_window}), got {self.ppl_stride}")


@dataclass
class ReportConfig:
    bootstrap_samples: int = _f(2000, "Bootstrap resamples for the held-out perplexity and bits-per-byte intervals (over documents); "
                                      "task comparisons use an analytic seeds x items analysis (report/stats.py).", ge=100)
    confidence: float = _f(0.95, "Interval confidence level.", gt=0, lt=1)
    target_difference: float = _f(0.05, "The task difference (a share: 0.05 = 5 points) the report plans for: where a "
                                        "comparison cannot detect it, how many seeds (or test items) would, from the "
                                        "run's own variance components.", gt=0, lt=1)
    gpu: str = _f("H100", "GPU used for the GPU-hour estimate when the run was on CPU (and by --dry-run).",
                  among=tuple(PEAK_FLOPS))
    assumed_mfu: float = _f(0.25, "Model-FLOPs utilisation assumed by --dry-run's GPU-hour estimate "
                                  "(0.20-0.24 measured on one H100 for a 0.5B Llama, BENCHMARKS.md).", gt=0, le=1)

    def __post_init__(self):
        check_fields(self)  # target_difference is a share: 0.05 = 5 points


@dataclass
class CompareConfig:
    control: Literal["none", "continued_general"] = _f("none", "Control arm: 'continued_general' also continues the general model on general text only "
                              "(the non-domain documents left after prepare), with the domain pre-training's steps, "
                              "tokens per step, schedule, learning rate and seed, then fine-tunes and scores it like the "
                              "other two models: the control of Gururangan et al. 2020 (Don't Stop Pretraining, "
                              "¬DAPT), which separates domain adaptation from the effect of more training of any kind. "
                              "'none': only the general and the domain model.")

    def __post_init__(self):
        check_fields(self)


@dataclass
class MixturePlanConfig:
    replay_shares: list[float] = _f([0.0, 0.05, 0.1, 0.25, 0.5], "`domainpt plan-mixture`: the replay shares (general text's "
                                    "share of the training mixture, as data.replay_share) of the pilot runs, one each; "
                                    "at least 4: one is left out of the fit (holdout_share) and three are fitted.",
                                    nonempty=True, unique=True)
    holdout_share: float = _f(0.1, "The piloted share left out of the fit and predicted from the others: the law's "
                                   "interpolation error. Must be one of replay_shares, neither the smallest nor the "
                                   "largest.", ge=0, lt=1)
    pilot_steps: int = _f(40, "Optimizer steps of each pilot (the recipe's tokens per step, its learning rate; the "
                              "schedule and its warm-up are stretched over the pilot).", gt=0)
    eval_points: int = _f(5, "Held-out checks along each pilot (every pilot_steps // eval_points steps, and at "
                             "pilot_steps): the points the law is fitted to. The last one is also predicted from the "
                             "earlier ones (extrapolation in tokens).", ge=3)
    budget_tokens: int | None = _f(None, "Training tokens the recommendation is for (None: train.max_steps x the "
                                         "pilots' tokens per step).", gt=0)
    max_general_increase: float = _f(0.02, "The bound on forgetting: the recommended share's predicted held-out general "
                                           "loss stays within the base model's x (1 + this).", ge=0)
    min_gain_per_doubling: float = _f(0.005, "More tokens stop paying where doubling them lowers the predicted domain "
                                             "loss by less than this share of it.", gt=0, lt=1)
    bootstrap_samples: int = _f(200, "Resamples of the held-out documents for the intervals on every prediction (each "
                                     "refits the law).", ge=20)
    length_check: bool = _f(
        True, "One more pilot, twice pilot_steps long (its schedule and warm-up stretched alike, its checks as far "
        "apart), at the fitted share nearest data.replay_share: the law fitted on the other pilots predicts it, under "
        "both token axes. It checks what a recommendation relies on, extrapolation to a longer schedule, which the "
        "other validations cannot; it costs two pilots' tokens.")
    token_axis: Literal["lr_area", "tokens"] = _f(
        "lr_area", "What the law's D counts. 'lr_area': tokens weighted by the learning rate over its peak (a step at "
        "half the peak LR counts half), so that the checks along a pilot's decaying schedule and the end of the full "
        "run's longer one sit on one axis (Tissue et al. 2024, arXiv 2408.11029). 'tokens': the plain token count, as "
        "D-CPT and CMR fit it (right when every point is the end of a run of its own). On the medical demo 'tokens' "
        "predicted a 4x longer run's final domain loss 11-12% too high, 'lr_area' 2-4% too low (one dataset, a cosine "
        "schedule: BENCHMARKS.md).")

    def __post_init__(self):
        check_fields(self)
        if any(not 0 <= s < 1 for s in self.replay_shares):
            bad = next(s for s in self.replay_shares if not 0 <= s < 1)
            raise ValueError(f"replay_shares: each must be in [0, 1), got {bad}")
        names = {}
        for s in self.replay_shares:  # each pilot's folder is named by its share to 6 significant digits (%g)
            if f"{s:g}" in names and names[f"{s:g}"] != s:
                raise ValueError(f"replay_shares: {names[f'{s:g}']} and {s} would share one pilot folder "
                                 f"(replay_{s:g}); give shares that differ within 6 significant digits")
            names[f"{s:g}"] = s
        if len(self.replay_shares) < 4:
            raise ValueError(f"replay_shares: need at least 4 shares (one held out, three to fit a law across shares), "
                             f"got {self.replay_shares}")
        if self.holdout_share not in self.replay_shares:
            raise ValueError(f"holdout_share: {self.holdout_share} is not one of replay_shares {self.replay_shares}")
        if self.holdout_share in (min(self.replay_shares), max(self.replay_shares)):
            raise ValueError(f"holdout_share: {self.holdout_share} is the smallest or largest of replay_shares "
                             f"{self.replay_shares}; predicting it would test extrapolation, not interpolation")
        if self.pilot_steps < self.eval_points:
            raise ValueError(f"pilot_steps: {self.pilot_steps} steps cannot hold eval_points={self.eval_points} "
                             "checks: a pilot too short to fit")


@dataclass
class Recipe:
    name: str = _f(None, "Run name.", nonempty=True)
    domain: str = _f(None, "Domain label (medical, legal, financial, ...).", nonempty=True)
    out_dir: str = _f(None, "Where every stage writes (relative paths are relative to the working directory).",
                      nonempty=True)
    model: ModelConfig = _f(None, "The general checkpoint.")
    data: DataConfig = _f(None, "Corpora and the prepare pipeline.")
    tasks: list = _f([], "Domain tasks for fine-tuning and evaluation.")
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={"help": "Optional vocabulary extension."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Continued pre-training."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA fine-tuning."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "Comparison report."})
    compare: CompareConfig = field(default_factory=CompareConfig, metadata={"help": "What the domain model is compared with."})
    mixture_plan: MixturePlanConfig = field(default_factory=MixturePlanConfig,
                                            metadata={"help": "`domainpt plan-mixture`: pilot runs and a fitted law."})

    def __post_init__(self):
        for k in ("name", "domain", "out_dir", "model", "data"):
            if getattr(self, k) is None:
                raise ValueError(f"{k}: is required")
        check_fields(self)
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: task names must be unique, got {names}")
        if self.compare.control != "none" and not self.data.general:
            raise ValueError(f"compare.control: {self.compare.control} trains on general text: it needs data.general sources")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, sections: tuple[str, ...], ignore: tuple[tuple[str, str | None], ...] = ()) -> str:
        """Stable hash of some sections, counting only values that differ from the defaults: a finished
        stage stays valid when a newer domainpt adds keys with defaults. `ignore`: (section, key) pairs left out, a
        key of None for the whole section (hashed as at its defaults)."""
        d = {k: _non_default(getattr(self, k)) for k in sections}
        for (section, old), new in RENAMED_KEYS.items():
            if new in d.get(section, {}):
                d[section][old] = d[section].pop(new)
        for section, key in (*_NOT_FINGERPRINTED, *ignore):
            if isinstance(d.get(section), dict):
                if key is None:
                    d[section] = {}
                else:
                    d[section].pop(key, None)
        # after the keys left out: a later section left with nothing counts as absent, as at its defaults
        d = {k: v for k, v in d.items() if not (k in _LATER_SECTIONS and v == {})}
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
_LATER_SECTIONS = {"tokenizer", "compare", "mixture_plan"}
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
    if origin is list:  # list[X]: every item an X
        item = typing.get_args(hint)
        return isinstance(value, list) and (not item or all(_type_ok(v, item[0]) for v in value))
    if origin is dict:  # dict[K, V]: every key a K, every value a V
        kv = typing.get_args(hint)
        return isinstance(value, dict) and (not kv or all(_type_ok(k, kv[0]) and _type_ok(v, kv[1]) for k, v in value.items()))
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """int, float, list of str, str or None, ... for a type error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list and args:
        return f"list of {_type_name(args[0])}"
    if origin is dict and args:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


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
            expected = f"one of {', '.join(map(str, choices_of(hint)))}" if choices_of(hint) else _type_name(hint)
            quote = (" (quote them: YAML reads yes/no/true as booleans and 0 as a number)"
                     if "list of str" in expected and isinstance(value, list) and any(isinstance(v, (bool, int, float)) for v in value)
                     else "")
            raise ValueError(f"{'.'.join(key)}: expected {expected}, got {type(value).__name__} {value!r}{quote}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(_under(dotted, str(e), names)) from None
    except TypeError as e:  # a required field left out
        raise ValueError(f"{dotted}: {e}") from None


def _under(dotted: str, message: str, names: set[str]) -> str:
    """'key: why' from a dataclass's own check -> 'section.key: why' (the whole dotted key); other messages get the
    section in front."""
    head, sep, rest = message.partition(": ")
    if sep and head in names:
        return f"{head if dotted == '<top>' else dotted + '.' + head}: {rest}"
    return message if dotted == "<top>" else f"{dotted}: {message}"


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


def recipe_from_dict(raw: dict) -> Recipe:
    """A recipe from the dict a manifest or results.json recorded (Recipe.to_dict), checked as a file would be."""
    try:
        return _build(Recipe, json.loads(json.dumps(raw)), ())
    except ValueError as e:
        raise DomainptError(f"recorded recipe: {e}") from None


def field_docs(cls=Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, for `domainpt keys` and docs/keys.md; a list of sections (data.domain,
    tasks) is followed by its items' fields as KEY.N.field."""
    rows = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += field_docs(hint, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed, rules = choices_of(hint), rule_text(f.metadata.get("checks", {}))
        help_ = f.metadata.get("help", "") + (f" One of: {', '.join(map(str, allowed))}." if allowed else "") \
            + (f" Rule: {rules}." if rules else "")
        rows.append((key, json.dumps(default), help_))
        item = {"data.domain": SourceConfig, "tasks": TaskConfig}.get(key)  # data.general's items: data.domain's fields
        if item is not None:
            rows += field_docs(item, key + ".N.")
        optional = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]  # e.g. a task's test_source
        if optional:
            rows += field_docs(optional[0], key + ".")
    return rows


# Rules between keys, checked when a recipe loads (the per-key rules are the fields' own: rule_rows).
CROSS_FIELD_RULES = (
    ("data.domain.N / data.general.N / tasks.N.source", "exactly one of path, builtin, hf; revision only with hf"),
    ("data.replay_share", "> 0 needs data.general sources"),
    ("data.clean.max_chars", "> data.clean.min_chars"),
    ("tasks", "task names unique"),
    ("tasks.N.name", "letters, digits, '.', '_', '-', not 'jobs' (it names folders and job ids)"),
    ("tasks.N.labels", "no empty label"),
    ("tasks.N.verbalizers", "each label maps to non-empty words; with labels set, exactly the task's labels"),
    ("tasks.N.prompt", "a valid template with at least one {field}"),
    ("tasks.N.metric", "accuracy or f1 (classification, multiple choice); exact_match or token_f1 (qa)"),
    ("tasks.N.scoring", "'head' only for classification"),
    ("train.warmup_start_lr", "<= train.lr"),
    ("train.betas", "two numbers in [0, 1)"),
    ("train.global_batch_size", "a multiple of processes x train.grad_accum (checked when a launch starts, and by --dry-run)"),
    ("lora.target_modules", "a preset name or a non-empty list of module names (the model's modules: preflight)"),
    ("lora.merge_export", "not with lora.quantize"),
    ("eval.ppl_stride", "<= eval.ppl_window"),
    ("eval.harness_tasks / eval.forgetting_tasks", "names lm-eval knows (checked before any work)"),
    ("compare.control", "continued_general needs data.general sources"),
    ("mixture_plan.replay_shares", "each in [0, 1); at least 4; distinct within 6 significant digits (they name the "
                                   "pilots' folders)"),
    ("mixture_plan.holdout_share", "one of mixture_plan.replay_shares, neither the smallest nor the largest"),
    ("mixture_plan.pilot_steps", ">= mixture_plan.eval_points"),
)


def rule_rows(cls=None, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, its rule in words) for every key with a rule of its own: type and Literal values included."""
    cls = cls or Recipe
    rows, hints = [], typing.get_type_hints(cls)
    items = {"data.domain": SourceConfig, "data.general": SourceConfig, "tasks": TaskConfig}
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += rule_rows(hint, key + ".")
        elif key in items:
            if rule := rule_text(f.metadata.get("checks", {})):
                rows.append((key, rule))
            if key != "data.general":  # the same fields as data.domain's
                rows += rule_rows(items[key], key.replace("data.domain", "data.domain/general") + ".N.")
        elif (allowed := choices_of(hint)) or (rule := rule_text(f.metadata.get("checks", {}))):
            rows.append((key, f"one of {', '.join(map(str, allowed))}" if allowed else rule))
    return rows


def rules_markdown() -> str:
    """docs/recipe-checks.md's catalogue: every key's own rule, then the rules between keys."""
    lines = ["| key | rule |", "|---|---|"] + [f"| `{k}` | {r} |" for k, r in rule_rows()]
    lines += ["", "| between keys | rule |", "|---|---|"] + [f"| `{k}` | {r} |" for k, r in CROSS_FIELD_RULES]
    return "\n".join(lines)


def keys_markdown() -> str:
    """The key reference page: every key with its default and its help (rule included), by section."""
    lines, section = [], None
    for key, default, help_ in field_docs():
        top = key.split(".")[0] if "." in key or key == "tasks" else "run"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | default | meaning |", "|---|---|---|"]
        cell = lambda t: t.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| `{key}` | `{cell(default)}` | {cell(help_)} |")
    return "\n".join(lines).strip()
