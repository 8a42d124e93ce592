"""LoRA target presets per architecture: each preset adapts exactly the layers it names, for decoders and
encoders, and a model type without a preset (or a name the model lacks) is a one-line error."""
import re

import pytest
import torch

from conftest import TINY


def _names(model_type: str, **kw) -> list[str]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.for_model(model_type, **kw)
    cls = AutoModelForMaskedLM if model_type in ("bert", "roberta", "distilbert") else AutoModelForCausalLM
    with torch.device("meta"):
        return [n for n, _ in cls.from_config(config).named_modules() if n]


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100)
CASES = {  # model type, config, {preset: expected layer suffixes of layer 0}
    "llama": (SMALL | {"num_key_value_heads": 1}, {"attention": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
                                                   "mlp": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}}),
    "gpt2": (dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100), {"attention": {"attn.c_attn", "attn.c_proj"},
                                                                     "mlp": {"mlp.c_fc", "mlp.c_proj"}}),
    "bert": (SMALL, {"attention": {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
                     "mlp": {"intermediate.dense", "output.dense"}}),
}


@pytest.mark.parametrize("model_type", CASES)
def test_presets_name_exactly_the_layers_of_each_block(model_type):
    from domainpt.lora_targets import resolve_targets

    kw, expected = CASES[model_type]
    names = _names(model_type, **kw)
    layer0 = re.compile(r".*(?:layers|h|layer)\.0\.(.+)")
    got = {}
    for preset in ("attention", "mlp", "attention+mlp"):
        pattern = resolve_targets(preset, model_type, names, model_type)
        got[preset] = {layer0.fullmatch(n).group(1) for n in names if re.fullmatch(pattern, n) and layer0.fullmatch(n)}
        assert all(layer0.fullmatch(n) or re.fullmatch(r".*\.1\..*", n) for n in names if re.fullmatch(pattern, n))  # only blocks
    assert got["attention"] == expected["attention"] and got["mlp"] == expected["mlp"]
    assert got["attention+mlp"] == expected["attention"] | expected["mlp"]


def test_a_preset_is_what_peft_adapts(tiny_llama):
    from peft import get_peft_model

    from domainpt.config import load_recipe
    from domainpt.finetune import lora_config
    from domainpt.models import load_model

    model = load_model(tiny_llama, "clm")
    peft_model = get_peft_model(model, lora_config(load_recipe(TINY, ["lora.target_modules=mlp"]), model))
    adapted = {n.rsplit(".lora_A", 1)[0].split("layers.", 1)[1] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert adapted == {f"{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}


def test_unknown_preset_family_and_missing_names_are_clear_errors():
    from domainpt.errors import DomainptError
    from domainpt.lora_targets import resolve_targets

    with pytest.raises(DomainptError, match="no preset for model type 'mamba'"):
        resolve_targets("attention", "mamba", ["backbone.layers.0.mixer.in_proj"], "m")
    with pytest.raises(DomainptError, match=r"\['wqkv'\] not in m .*presets: attention, mlp, attention\+mlp, all-linear"):
        resolve_targets(["wqkv"], "llama", ["model.layers.0.self_attn.q_proj"], "m")
    assert resolve_targets(["self_attn.q_proj"], "llama", ["model.layers.0.self_attn.q_proj"], "m") == ["self_attn.q_proj"]
