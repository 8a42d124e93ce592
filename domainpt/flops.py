"""FLOPs and model-FLOPs utilisation (MFU)."""
from __future__ import annotations

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "V100": 125e12}


def matmul_params(model) -> int:
    """Parameters that cost 2 FLOPs per token forward: all but the input embedding table, with the
    output projection counted even when it is tied to that table."""
    inp = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p is not inp)
    out = model.get_output_embeddings()
    if out is not None and out.weight is inp:
        n += inp.numel()
    return n


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, training: bool = True) -> float:
    """6N + 12*L*H*T for a training step (forward + backward; PaLM appendix B); a third of it forward only."""
    f = 6 * n_params + 12 * n_layers * hidden * seq_len
    return f if training else f / 3


def model_flops_per_token(model, seq_len: int, training: bool = True) -> float:
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0)
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0)
    return flops_per_token(matmul_params(model), layers, hidden, seq_len, training)


def device_name(device) -> str:
    """What the hardware was, for manifests and model cards: the GPU's own name, or the CPU's cores."""
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads per process)"


def device_peak_flops(device) -> float | None:
    """Known peak of the current GPU, or None (CPU or an unknown card: MFU is then not reported)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS.items():
        if key in name:
            return peak
    return None
