import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "demo" / "tiny.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cli(*args, cwd=ROOT, timeout=900, env=None):
    """Run `python -m domainpt ...` the way a user does; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "domainpt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


CONTRACT_CHECKER = ROOT.parent / "shared" / "contracts" / "check_results.py"


def check_results_contract(results_json) -> None:
    """The shared contract checker on a results.json, when the checker sits next to this checkout."""
    if CONTRACT_CHECKER.is_file():
        r = subprocess.run([sys.executable, CONTRACT_CHECKER, results_json], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def tiny_recipe_variant(tmp_path, edit) -> Path:
    """The tiny recipe with `edit(recipe_dict)` applied and out_dir under tmp_path, written to a file."""
    import yaml

    recipe = yaml.safe_load(TINY.read_text())
    edit(recipe)
    recipe["out_dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_harness_task(folder: Path, examples: list[dict], name: str) -> Path:
    """A multiple-choice lm-eval task YAML over domainpt's prepared test items: the same prompt, the choices
    without domainpt's leading space (lm-eval puts its target delimiter, a space, in front of each)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps({"prompt": e["prompt"], "choices": [c[1:] if c.startswith(" ") else c for c in e["choices"]],
                                "answer": e["answer"]}) + "\n")
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / f'{name}.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return folder


def copy_stages(src: Path, dst: Path, *stages: str) -> Path:
    """Copy stage folders (and whatever else is named, e.g. base_model) of a shared run into a test's own out_dir:
    a test never writes into a shared fixture's folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shutil.copytree(src / stage, dst / stage)
    return dst


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A session artifact built once for the whole test run, however many xdist workers there are: the first
    worker to take the lock builds it (`build(folder)`, into an empty folder), the others wait and reuse it. A failed build leaves no
    `.done` mark, so the next worker tries again (and fails the same way, with its own message)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temporary folder, shared by its workers
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """The tiny recipe's general model (a seeded, randomly initialised 2-layer Llama with SmolLM2's tokenizer), for
    tests that need only a model: the same weights as tiny_run's base_model, without running the pipeline."""
    def build(folder):
        from domainpt.config import load_recipe
        from domainpt.models import materialize_general_model

        materialize_general_model(load_recipe(TINY), folder)

    return str(built_once(tmp_path_factory, "tiny_llama", build))


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """The tiny recipe's out_dir after `domainpt prepare` only (prepare/ and base_model/): where pretrain tests
    start. Shared and read-only: copy_stages(prepared_tiny, tmp_path / "run", "prepare") before running on it."""
    def build(folder):
        r = cli("prepare", TINY, f"out_dir={folder}")
        assert r.returncode == 0, r.stderr[-3000:]

    return built_once(tmp_path_factory, "tiny_prepared", build)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, prepared_tiny):
    """One full `domainpt run` of the tiny recipe from prepared_tiny, shared by the tests that read its outputs
    (read-only: copy_stages what a test runs on). Returns (out_dir, the run's CompletedProcess-like result)."""
    def build(folder):
        copy_stages(prepared_tiny, folder, "prepare", "base_model")
        r = cli("run", TINY, f"out_dir={folder}")
        assert r.returncode == 0, r.stderr[-3000:]
        (folder / ".run_output.json").write_text(json.dumps({"returncode": r.returncode, "stdout": r.stdout,
                                                             "stderr": r.stderr}))

    out = built_once(tmp_path_factory, "tiny_run", build)
    return out, SimpleNamespace(**json.loads((out / ".run_output.json").read_text()))


@pytest.fixture(scope="session")
def tokenizer():
    from domainpt.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


GOOD, BAD, NEUTRAL = ["great", "fine", "nice", "superb"], ["awful", "poor", "sad", "broken"], ["the", "item", "was", "and", "it", "seems"]


def review_examples(n=64, seed=0):
    """A learnable two-label task: the label follows from which word list most review words come from."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(2)] + [rng.choice(BAD if y else GOOD) for _ in range(4)]
        rng.shuffle(words)
        out.append({"id": str(i), "prompt": f"Review: {' '.join(words)}\nAnswer:", "choices": [" good", " bad"], "answer": y})
    return out


def _bert_tokenizer(tk):
    from tokenizers import decoders, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return tk, lambda: PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                               sep_token="[SEP]", mask_token="[MASK]")


def _save_bert(d, tok, hidden, positions, init_range=0.02):
    import torch
    from tokenizers import processors
    from transformers import BertConfig, BertForMaskedLM

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=2 * hidden, max_position_embeddings=positions,
                               initializer_range=init_range)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a WordPiece vocabulary of review_examples' words."""
    from tokenizers import Tokenizer, models

    words = sorted(set(GOOD + BAD + NEUTRAL + ["review", "answer", ":", "good", "bad"]))
    tk, make = _bert_tokenizer(Tokenizer(models.WordPiece({t: i for i, t in enumerate(SPECIALS + words)}, unk_token="[UNK]")))
    # embeddings 10x the usual init: the frozen, tied MLM decoder of a random 32-wide model could otherwise
    # not separate two words by more than ~1 logit, whatever LoRA does upstream (a pretrained BERT can)
    return _save_bert(tmp_path_factory.mktemp("bert"), make(), hidden=32, positions=64, init_range=0.2)


@pytest.fixture(scope="session")
def demo_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT whose WordPiece vocabulary (2,000) is trained on the demo corpora."""
    import itertools

    from tokenizers import Tokenizer, models, trainers

    from domainpt.data.builtin import read_builtin

    texts = [r["text"] for r in itertools.islice(read_builtin("scancode-licenses"), 400)]
    texts += [r["text"] for r in itertools.islice(read_builtin("wikipedia-sample"), 60)]
    tk, make = _bert_tokenizer(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    tk.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=SPECIALS))
    return _save_bert(tmp_path_factory.mktemp("demo_bert"), make(), hidden=64, positions=160)
