"""Attention kernels for continued pre-training (`train.attention`).

Packed blocks hold several documents; keeping attention inside each document has a price that
depends on the kernel:
- `sdpa` (default) and `eager`: transformers builds a dense block-diagonal mask from the position
  ids for every forward, and SDPA cannot use its flash kernel with a mask (measured on an H100:
  15% slower than no isolation, BENCHMARKS.md).
- `flex_attention`: the same documents as a sparse BlockMask; blocks outside a document are skipped.
- `varlen`, `flash_attention_2`, `flash_attention_3`: the micro-batch is flattened into one row
  with the document boundaries as cumulative lengths (`flatten_rows`), and a variable-length flash
  kernel runs each document on its own, with no mask at all. `varlen` is torch's built-in
  `torch.nn.attention.varlen.varlen_attn` (CUDA, no extra package); `flash_attention_2/3` are
  transformers' paths over the `flash-attn` packages, fed the same flattened batch.
"""
from __future__ import annotations

import importlib.util
import inspect

import torch

from domainpt.errors import DomainptError

FLATTENED = ("varlen", "flash_attention_2", "flash_attention_3")  # kernels that take one row + cumulative lengths
VARLEN_NAME = "domainpt_varlen"  # what transformers knows the `varlen` kernel as


def implementation_name(attention: str) -> str | None:
    """The `attn_implementation` transformers loads the model with (None for sdpa: transformers' default,
    which falls back to eager for the few architectures without SDPA)."""
    if attention == "sdpa":
        return None
    if attention == "varlen":
        register_varlen()
        return VARLEN_NAME
    return attention


def check_usable(attention: str, objective: str, device: torch.device | None) -> None:
    """One-line refusals, before any output is written, for kernels this process cannot train with.
    device None (the prepare stage's preflight, maybe on a CPU-only data node): only what the model decides."""
    if attention in ("sdpa", "eager"):
        return
    if objective != "clm":
        raise DomainptError(f"train.attention={attention} is for causal LMs (packed documents); masked-LM training "
                            "uses sdpa or eager")
    if device is None:
        return
    if device.type != "cuda":
        why = "torch has no flex-attention backward on CPU" if attention == "flex_attention" else "its kernels are CUDA-only"
        raise DomainptError(f"train.attention={attention} needs a CUDA GPU ({why}); use sdpa here")
    if attention == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        raise DomainptError(f"train.attention=varlen needs a torch with torch.nn.attention.varlen (this is {torch.__version__}); "
                            "upgrade torch, or use flash_attention_2")
    package, where = {"flash_attention_2": ("flash_attn", "pip install flash-attn"),
                      "flash_attention_3": ("flash_attn_interface", "flash-attention's hopper/ build")}.get(attention, (None, None))
    if package and importlib.util.find_spec(package) is None:
        raise DomainptError(f"train.attention={attention} needs the {package} package ({where}); "
                            "train.attention=varlen runs the same kind of kernel from torch itself")


def flatten_rows(batch: dict, doc_isolation: bool) -> dict:
    """(B, T) packed rows -> one (1, B*T) row plus the cumulative sequence lengths a varlen kernel needs.

    A sequence starts at every row start (rows are unrelated blocks, and a block may begin inside a
    document) and, with document isolation, at every document start. Each row's first label is
    ignored: in (B, T) form nothing predicts it, and in one row it would be predicted from the
    previous row's last token. The loss is then the (B, T) loss exactly. Built on the CPU by the
    collate, so the kernel needs no device sync to learn the boundaries."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    pos = batch.get("position_ids")
    if pos is None:
        pos = torch.arange(width).expand(rows, width)
    starts = pos == 0 if doc_isolation else torch.zeros_like(pos, dtype=torch.bool)
    starts[:, 0] = True
    cu = torch.cat([starts.reshape(-1).nonzero().view(-1), torch.tensor([rows * width])]).to(torch.int32)
    longest = int(cu.diff().max())
    labels = batch["labels"].clone()
    labels[:, 0] = -100
    return {"input_ids": ids.reshape(1, -1), "position_ids": pos.reshape(1, -1), "labels": labels.reshape(1, -1),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def varlen_kernel(*args, **kwargs):
    """torch's variable-length flash attention (a module-level name so a test can give the CPU a reference)."""
    from torch.nn.attention.varlen import varlen_attn

    return call_with_gqa(varlen_attn, *args, **kwargs)


def call_with_gqa(kernel, q, k, v, *args, enable_gqa: bool = False, **kwargs):
    """Call `kernel`, grouped-query attention included, whether or not it takes `enable_gqa`.

    torch 2.11's varlen_attn has no `enable_gqa` (found on an H200, BENCHMARKS.md); for such a
    kernel each key/value head is repeated for its group of query heads, as transformers' repeat_kv does."""
    if "enable_gqa" in inspect.signature(kernel).parameters:
        return kernel(q, k, v, *args, enable_gqa=enable_gqa, **kwargs)
    if enable_gqa:  # (tokens, heads, dim): query head h reads key/value head h // group
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return kernel(q, k, v, *args, **kwargs)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers attention function for `train.attention=varlen`.

    Training batches come from `flatten_rows` (one row, cumulative lengths). Anything else — the
    held-out checks, with their padded batches and 2-D masks — is not training and runs SDPA."""
    if cu_seq_lens_q is None:
        if module.training:
            raise DomainptError("train.attention=varlen trains on flattened batches (domainpt.training.attention.flatten_rows); "
                                "this batch has no cu_seq_lens_q")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout or kwargs.get("softcap") or kwargs.get("sliding_window"):
        raise DomainptError("train.attention=varlen supports neither attention dropout, logit soft-capping nor sliding "
                            "windows; use sdpa or flash_attention_2 for this model")
    if query.dtype == torch.float32:  # under autocast, RoPE leaves q and k in fp32; flash kernels take bf16/fp16
        device = query.device.type
        if not torch.is_autocast_enabled(device):
            raise DomainptError("train.attention=varlen runs in bf16 or fp16: set train.mixed_precision (auto is bf16 on GPU)")
        half = torch.get_autocast_dtype(device)
        query, key, value = query.to(half), key.to(half), value.to(half)
    batch, heads, length, dim = query.shape  # transformers' (batch, heads, tokens, head_dim); batch is 1 here
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], value.shape[-1])
    causal = getattr(module, "is_causal", True)
    out = varlen_kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scale=scaling,
                        window_size=(-1, 0) if causal else (-1, -1), enable_gqa=k.shape[1] != heads)
    return out.view(batch, length, heads, -1), None


def _no_mask_for_flat_rows(*args, attention_mask=None, **kwargs):
    """No dense mask for flattened training rows (the lengths say it all); padded eval batches get SDPA's."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_varlen() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_NAME, _no_mask_for_flat_rows)
