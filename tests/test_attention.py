"""`train.attention`: flattened batches for variable-length kernels keep the mathematics of the packed path.

torch's varlen flash kernel is CUDA-only, so on CPU `reference_varlen` (SDPA run document by document)
stands in for it: these tests check domainpt's side — the cumulative lengths, the flattened labels,
the layout handed to the kernel, grouped-query heads, autocast — not the kernel itself, which
`bench/gpu_pretrain.py --variants default,varlen` checks on a GPU (same losses as SDPA).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import domainpt.training.attention as attention
from conftest import TINY, cli, copy_stages
from domainpt.errors import DomainptError
from domainpt.training.batches import make_collate


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1), enable_gqa=False):
    assert torch.equal(cu_q, cu_k) and max_q == int(cu_q.diff().max()) and q.dtype == torch.bfloat16
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        o = F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1).float() for t in (q, k, v)), scale=scale,
                                           is_causal=tuple(window_size) == (-1, 0), enable_gqa=enable_gqa)
        out[s:e] = o.transpose(0, 1).to(q.dtype)
    return out


@pytest.fixture
def cpu_varlen(monkeypatch):
    """The reference kernel in place of torch's; returns the list of its calls' sequence counts."""
    calls = []

    def counted(q, k, v, cu_q, *args, **kwargs):
        calls.append(len(cu_q) - 1)
        return reference_varlen(q, k, v, cu_q, *args, **kwargs)

    monkeypatch.setattr(attention, "varlen_kernel", counted)
    return calls


def packed_items(rows=3, seed=0):
    """Blocks of 16 tokens that start inside a document (positions 3..7), then two whole documents."""
    rng = np.random.default_rng(seed)
    pos = np.concatenate([np.arange(3, 8), np.arange(6), np.arange(5)]).astype(np.int64)
    return [{"input_ids": rng.integers(1, 500, 16).astype(np.int64), "position_ids": pos} for _ in range(rows)]


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)  # grouped-query attention, as Llama 3 / Qwen
    return LlamaForCausalLM(cfg).train()


def test_flattened_rows_start_a_sequence_at_every_row_and_document():
    items = packed_items()
    flat = make_collate("clm", None, doc_isolation=True, flatten=True)(items)
    assert flat["input_ids"].shape == flat["labels"].shape == flat["position_ids"].shape == (1, 48)
    assert flat["cu_seq_lens_q"].tolist() == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48]
    assert flat["cu_seq_lens_q"].dtype == torch.int32 and flat["max_length_q"] == 6
    packed = make_collate("clm", None, doc_isolation=True)(items)
    # The same targets are predicted: each row's first label (never predicted in (B, T) form) is ignored.
    assert (flat["labels"][0, 1:] != -100).sum() == (packed["labels"][:, 1:] != -100).sum() == 3 * 13
    no_iso = make_collate("clm", None, doc_isolation=False, flatten=True)(items)
    assert no_iso["cu_seq_lens_q"].tolist() == [0, 16, 32, 48] and no_iso["position_ids"][0, 16:20].tolist() == [0, 1, 2, 3]


def test_varlen_path_gives_the_packed_loss_and_gradients(cpu_varlen):
    model = small_llama()
    items = packed_items()

    def loss_and_grads(batch, impl):
        model.set_attn_implementation(impl)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    sdpa = loss_and_grads(make_collate("clm", None, True)(items), "sdpa")
    varlen = loss_and_grads(make_collate("clm", None, True, flatten=True)(items), attention.implementation_name("varlen"))
    mixed = loss_and_grads(make_collate("clm", None, False)(items), "sdpa")  # attention across documents
    tol = 5e-4
    assert varlen[0] == pytest.approx(sdpa[0], abs=tol)
    assert abs(mixed[0] - sdpa[0]) > 10 * tol  # the tolerance tells isolation from no isolation
    for g_var, g_sdpa in zip(varlen[1], sdpa[1]):
        assert (g_var - g_sdpa).norm() <= 0.02 * g_sdpa.norm() + 1e-6


def test_grouped_query_attention_through_a_kernel_without_enable_gqa():
    """torch 2.11's varlen_attn takes no enable_gqa: the key/value heads are repeated for it instead."""
    def old_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1)):
        assert k.shape[1] == q.shape[1]  # it could not have grouped the heads itself
        return reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    g = torch.Generator().manual_seed(0)
    q = torch.randn(10, 4, 8, generator=g).bfloat16()
    k, v = (torch.randn(10, 2, 8, generator=g).bfloat16() for _ in range(2))
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    args = (q, k, v, cu, cu, 7, 7)
    expected = reference_varlen(*args, window_size=(-1, 0), enable_gqa=True)
    assert torch.equal(attention.call_with_gqa(old_kernel, *args, window_size=(-1, 0), enable_gqa=True), expected)
    assert torch.equal(attention.call_with_gqa(reference_varlen, *args, window_size=(-1, 0), enable_gqa=True), expected)
    # a wrong grouping (heads tiled instead of interleaved) would not give the same output
    tiled = reference_varlen(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), cu, cu, 7, 7, window_size=(-1, 0))
    assert not torch.equal(tiled, expected)


def test_varlen_model_runs_sdpa_outside_training_and_refuses_unflattened_training(cpu_varlen):
    model = small_llama()
    ids = torch.randint(1, 500, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation(attention.implementation_name("varlen"))
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, ref, atol=1e-5)  # held-out checks: padded batches, SDPA
    model.train()
    with pytest.raises(DomainptError, match="flattened batches"):
        model(input_ids=ids, labels=ids, use_cache=False)
    with pytest.raises(DomainptError, match="bf16 or fp16"):
        model(**make_collate("clm", None, True, flatten=True)(packed_items()), use_cache=False)


def test_pretrain_with_varlen_matches_sdpa(prepared_tiny, tmp_path, cpu_varlen, monkeypatch):
    """The recipe switch end to end: the real loop with train.attention=varlen (reference kernel on CPU,
    bf16 autocast) gives the losses and held-out perplexities of the SDPA run."""
    from accelerate.state import AcceleratorState

    import domainpt.pretrain as pretrain
    from domainpt.config import load_recipe

    monkeypatch.setattr(pretrain, "check_usable", lambda *a: None)  # CPU: the kernel's device check would refuse
    runs = {}
    for kind in ("sdpa", "varlen"):
        out = copy_stages(prepared_tiny, tmp_path / kind, "prepare")
        recipe = load_recipe(TINY, [f"out_dir={out}", f"train.attention={kind}", "train.mixed_precision=bf16",
                                    "train.max_steps=2", "train.eval_every=2", "train.save_every=0",
                                    "train.ppl_max_tokens=256", "train.batch_size=2"])  # bf16 matmuls are slow on CPU
        AcceleratorState._reset_state(reset_partial_state=True)
        pretrain.run_pretrain(recipe)
        runs[kind] = out / "pretrain"
        if kind == "sdpa":
            assert not cpu_varlen
    # One call per layer per training forward (2 layers x 2 steps); the held-out checks ran SDPA.
    assert len(cpu_varlen) == 2 * 2 and min(cpu_varlen) >= 2  # each a flattened batch: at least its 2 rows
    AcceleratorState._reset_state(reset_partial_state=True)
    losses = {k: [json.loads(l)["loss"] for l in open(p / "metrics.jsonl")] for k, p in runs.items()}
    assert losses["varlen"] == pytest.approx(losses["sdpa"], rel=2e-3)
    evals = {k: json.loads((p / "manifest.json").read_text())["eval_history"] for k, p in runs.items()}
    assert evals["varlen"][-1]["eval_domain_ppl"] == pytest.approx(evals["sdpa"][-1]["eval_domain_ppl"], rel=2e-3)
    saved = json.loads((runs["varlen"] / "model" / "config.json").read_text())
    assert not any("attn" in k for k in saved)  # the saved model loads anywhere, with the default kernel


def test_unusable_kernels_are_refused_in_one_line(monkeypatch):
    from domainpt.config import TrainConfig

    with pytest.raises(DomainptError, match="needs a CUDA GPU"):
        attention.check_usable("varlen", "clm", torch.device("cpu"))
    with pytest.raises(DomainptError, match="no flex-attention backward on CPU"):
        attention.check_usable("flex_attention", "clm", torch.device("cpu"))
    with pytest.raises(DomainptError, match="masked-LM"):
        attention.check_usable("varlen", "mlm", torch.device("cuda"))
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DomainptError, match="needs the flash_attn package"):
        attention.check_usable("flash_attention_2", "clm", torch.device("cuda"))
    with pytest.raises(DomainptError, match="needs a torch with torch.nn.attention.varlen"):
        attention.check_usable("varlen", "clm", torch.device("cuda"))
    attention.check_usable("sdpa", "mlm", torch.device("cpu"))
    with pytest.raises(ValueError, match="attention: must be one of"):
        TrainConfig(attention="flash")


def test_a_gpu_kernel_on_a_cpu_machine_is_refused_before_training(prepared_tiny, tmp_path):
    out = copy_stages(prepared_tiny, tmp_path / "run", "prepare")
    r = cli("pretrain", TINY, f"out_dir={out}", "train.attention=varlen")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "train.attention=varlen needs a CUDA GPU" in r.stderr.strip().splitlines()[-1]
    assert not (out / "pretrain" / "manifest.json").exists()


def test_a_flattened_kernel_for_an_encoder_is_refused_by_prepare(demo_bert, tmp_path):
    out = tmp_path / "run"
    r = cli("prepare", TINY, f"out_dir={out}", f"model.base={demo_bert}", "model.init=pretrained", "train.attention=varlen")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "train.attention=varlen is for causal LMs" in r.stderr.strip().splitlines()[-1]
    assert not (out / "prepare" / "manifest.json").exists()
