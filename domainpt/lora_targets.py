"""Which layers LoRA adapts: a list of module names, peft's 'all-linear', or a preset per architecture.

Presets ('attention', 'mlp', 'attention+mlp') are regular expressions over full module names, one per
architecture family, because the same short name means different layers in different models (BERT's
`output.dense` is the MLP's down projection in `layer.N.output` and the attention's in
`attention.output`). peft matches a string target with re.fullmatch, so a preset goes to peft as is.
"""
from __future__ import annotations

import re

from domainpt.errors import DomainptError

PRESET_NAMES = ("attention", "mlp", "attention+mlp")

# family -> (attention regex, mlp regex) over full module names
FAMILIES = {
    "llama": (r".*\.self_attn\.(q_proj|k_proj|v_proj|o_proj)", r".*\.mlp\.(gate_proj|up_proj|down_proj)"),
    "phi3": (r".*\.self_attn\.(qkv_proj|o_proj)", r".*\.mlp\.(gate_up_proj|down_proj)"),
    "gpt2": (r".*\.attn\.(c_attn|c_proj)", r".*\.mlp\.(c_fc|c_proj)"),
    "gpt_neox": (r".*\.attention\.(query_key_value|dense)", r".*\.mlp\.(dense_h_to_4h|dense_4h_to_h)"),
    "bert": (r".*\.attention\.(self\.(query|key|value)|output\.dense)", r".*\.layer\.\d+\.(intermediate|output)\.dense"),
    "distilbert": (r".*\.attention\.(q_lin|k_lin|v_lin|out_lin)", r".*\.ffn\.(lin1|lin2)"),
}
MODEL_FAMILY = {
    **{t: "llama" for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
                            "gemma3_text", "olmo", "olmo2", "granite", "smollm3", "cohere", "stablelm", "starcoder2")},
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    **{t: "bert" for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "distilbert": "distilbert",
}


def preset_pattern(preset: str, model_type: str) -> str:
    family = MODEL_FAMILY.get(model_type)
    if family is None:
        raise DomainptError(f"lora.target_modules={preset}: no preset for model type '{model_type}' "
                            f"(presets cover {', '.join(sorted(MODEL_FAMILY))}); name the modules, or use all-linear")
    attention, mlp = FAMILIES[family]
    parts = {"attention": [attention], "mlp": [mlp], "attention+mlp": [attention, mlp]}[preset]
    return "|".join(f"(?:{p})" for p in parts)


def resolve_targets(targets, model_type: str, module_names: list[str], model_name: str):
    """The target_modules value for peft, after checking that it names layers this model has."""
    if targets == "all-linear":
        return targets
    if isinstance(targets, str) and targets in PRESET_NAMES:
        pattern = preset_pattern(targets, model_type)
        if not any(re.fullmatch(pattern, n) for n in module_names):
            raise DomainptError(f"lora.target_modules={targets}: the {model_type} preset matches no layer of {model_name}")
        return pattern
    wanted = targets if isinstance(targets, list) else [targets]
    short = {n.split(".")[-1] for n in module_names}
    missing = [t for t in wanted if t not in short and not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        have = sorted(n for n in short if not n.isdigit() and n.endswith(("proj", "fc1", "fc2", "dense", "query", "key", "value",
                                                                         "c_attn", "c_proj", "c_fc", "out_proj", "wq", "wk", "wv", "wo")))
        raise DomainptError(f"lora.target_modules: {missing} not in {model_name} (its linear layers include: "
                            f"{', '.join(have[:12]) or ', '.join(sorted(short)[:12])}; presets: {', '.join(PRESET_NAMES)}, all-linear)")
    return wanted
