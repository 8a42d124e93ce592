"""QLoRA (`lora.quantize`): LoRA on a 4-bit (nf4) or 8-bit base through bitsandbytes. Recent bitsandbytes (0.50 tested)
has CPU kernels, so the whole path runs here; on a GPU the same code places the model on cuda:0."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, cli, copy_stages, review_examples


def test_missing_bitsandbytes_or_kernels_is_a_one_line_error(monkeypatch):
    import importlib.util

    from domainpt import models
    from domainpt.errors import DomainptError

    assert models.quantization_config("none") is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(DomainptError, match=r"needs bitsandbytes: pip install 'domainpt\[qlora\]'"):
        models.quantization_config("nf4")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if importlib.util.find_spec("bitsandbytes") is None or torch.cuda.is_available():
        return
    monkeypatch.setattr(models, "_bnb_runs_on_cpu", lambda: False)
    with pytest.raises(DomainptError, match="has no CPU kernels and there is no CUDA GPU"):
        models.quantization_config("int8")
    with pytest.raises(ValueError, match="merge_export: merging into quantised weights"):
        from domainpt.config import LoraConfig

        LoraConfig(quantize="nf4", merge_export=True)


@pytest.fixture(scope="module")
def learnable_llama(tiny_llama, tmp_path_factory):
    """The tiny run's Llama shape, initialised 10x wider than usual: with the usual 0.02 a random model's frozen,
    tied embeddings keep any LoRA from moving a 49k-way prediction far (loss 10.2 -> 9.9 in 60 steps)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from domainpt.models import load_tokenizer

    base = tiny_llama
    config = AutoConfig.from_pretrained(base)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(d)
    load_tokenizer(str(base)).save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("quantize,layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_qlora_trains_only_the_adapter_on_a_quantised_base(learnable_llama, tmp_path, quantize, layer):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from domainpt.config import load_recipe
    from domainpt.eval.scoring import score_examples
    from domainpt.finetune import train_adapter, training_features
    from domainpt.encoding import end_of_text_id
    from domainpt.models import load_model, load_tokenizer

    base = learnable_llama
    tok = load_tokenizer(base)
    eot = end_of_text_id(tok)
    examples = review_examples()
    recipe = load_recipe(TINY, [f"lora.quantize={quantize}", "lora.steps=60", "lora.lr=0.01", "lora.batch_size=8"])
    log = train_adapter(recipe, base, training_features(tok, examples, eot, eot), 0, tmp_path / "adapter", desc="q")
    losses = log["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved), list(saved)  # the quantised base is never saved
    rows = []
    for _ in range(2):
        qbase = load_model(base, "clm", quantize=quantize)
        assert type(qbase.model.layers[0].self_attn.q_proj).__name__ == layer
        rows.append(score_examples(PeftModel.from_pretrained(qbase, str(tmp_path / "adapter")), tok, examples, eot))
    assert rows[0] == rows[1]
    assert sum(r["correct"] for r in rows[0]) / len(examples) >= 0.9


def test_qlora_through_finetune_and_evaluate(tiny_run, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = copy_stages(tiny_run[0], tmp_path / "run", "prepare", "pretrain")
    for stage in ("finetune", "evaluate"):
        r = cli(stage, TINY, f"out_dir={run}", "lora.quantize=nf4", "lora.seeds=[0]")  # one seed: nf4 is slow on CPU
        assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "finetune" / "manifest.json").read_text())["quantize"] == "nf4"
    scores = json.loads((run / "evaluate" / "scores.json").read_text())["tasks"]["licence-category"]
    for m in ("general_model", "domain_model"):
        assert set(scores[m]["finetuned"]) == {"0"}
    preds = (run / "evaluate" / "predictions" / "licence-category" / "domain_model" / "seed0.jsonl").read_text().splitlines()
    from domainpt.tasks import read_split

    assert len(preds) == len(read_split(run / "prepare" / "tasks" / "licence-category", "test")) > 0
