"""Notebook 06's from-scratch code: GGUF blocks bit-exact vs `gguf`, GPTQ beats RTN on held-out inputs,
and quantized SmolLM2 perplexities are finite and ordered as the notebook claims."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch

from utils import assets, corpora
from utils.model import load_smollm2, perplexity
from utils.nbimport import load_exports
from utils.results import REPO_ROOT

NB = load_exports(REPO_ROOT / "notebooks" / "06_quantizing_an_llm.ipynb")
FORMATS = {"Q8_0": (NB.q8_0_encode, NB.q8_0_decode), "Q4_0": (NB.q4_0_encode, NB.q4_0_decode),
           "Q4_1": (NB.q4_1_encode, NB.q4_1_decode)}


@pytest.fixture(scope="module")
def reader():
    return gguf.GGUFReader(str(assets.gguf_path()))


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_decode_bit_exact_on_edge_cases(fmt):
    enc, dec = FORMATS[fmt]
    qtype = gguf.GGMLQuantizationType[fmt]
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 96, generator=g) * torch.logspace(-4, 2, 8)[:, None]
    w[0, :32] = 0                                   # all-zero block
    w[1, :32] = -w[1, :32].abs()                    # negative extreme
    w[2, :32] = 0.125                               # constant block
    w[3, 5] = 1e4                                   # a huge outlier
    ref = torch.from_numpy(gguf.quants.quantize(w.numpy(), qtype))
    assert torch.equal(enc(w), ref)
    assert np.array_equal(dec(ref, 96).numpy(), gguf.quants.dequantize(ref.numpy(), qtype).reshape(-1, 96))


def test_decoders_bit_exact_on_the_models_own_tensors(reader):
    seen = set()
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in FORMATS or (name in seen and not t.name.startswith("blk.29")):
            continue
        seen.add(name)
        raw = torch.from_numpy(np.array(t.data))
        mine = FORMATS[name][1](raw, int(t.shape[0]))
        ref = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(-1, int(t.shape[0]))
        assert np.array_equal(mine.numpy(), ref), t.name
    assert seen == {"Q8_0", "Q4_1"}


@pytest.fixture(scope="module")
def smol():
    return load_smollm2()


@pytest.fixture(scope="module")
def calib_inputs(smol):
    model, tok = smol
    name = "model.layers.5.mlp.down_proj"
    ids = torch.tensor(tok(corpora.shakespeare_split()[0][:200_000])["input_ids"][: 8 * 256]).view(8, 256)
    rows = []
    hook = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda m, a: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        for seq in ids:
            model(seq[None])
    hook.remove()
    return dict(model.named_modules())[name].weight.detach().clone(), torch.cat(rows)


@pytest.mark.slow
def test_gptq_lowers_held_out_output_error_vs_rtn(calib_inputs):
    w, x = calib_inputs
    x_fit, x_held = x[0::2], x[1::2]

    def err(q):
        return ((x_held @ w.T - x_held @ q.T) ** 2).mean().item()

    for group in (64, None):
        rtn = NB.quantize_rtn(w, 4, group)
        gptq = NB.gptq_quantize(w, x_fit.T @ x_fit, 4, group, damp=0.1)
        assert err(gptq) < 0.95 * err(rtn), (group, err(gptq), err(rtn))
        for row in gptq.reshape(-1, group or w.shape[1])[:50]:
            assert len(torch.unique(row)) <= 16


@pytest.mark.slow
def test_quantized_perplexities_are_finite_and_ordered(smol):
    model, tok = smol
    lins = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    orig = {n: m.weight.detach().clone() for n, m in lins.items()}
    ids = torch.tensor(tok(corpora.docs_split()[1])["input_ids"][: 2 * 256])

    def ppl_with(fn):
        for n, lin in lins.items():
            lin.weight.data.copy_(fn(orig[n]))
        try:
            return perplexity(model, ids, window=256)
        finally:
            for n, lin in lins.items():
                lin.weight.data.copy_(orig[n])

    base = perplexity(model, ids, window=256)
    p = {
        "int8": ppl_with(lambda w: NB.quantize_rtn(w, 8, None, symmetric=True)),
        "int4 g32": ppl_with(lambda w: NB.quantize_rtn(w, 4, 32)),
        "int4 g64": ppl_with(lambda w: NB.quantize_rtn(w, 4, 64)),
        "int4 per channel": ppl_with(lambda w: NB.quantize_rtn(w, 4, None)),
    }
    assert all(math.isfinite(v) for v in p.values())
    assert abs(p["int4 g32"] - base) < 1e-3 * base          # lands on the stored Q4_1 grid
    assert abs(p["int8"] - base) < 0.05 * base
    assert base < p["int4 g64"] < p["int4 per channel"]


def _layer(seed: int = 0, out_f: int = 24, in_f: int = 128, n: int = 400):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    x = torch.randn(n, in_f, generator=g) @ (torch.randn(in_f, in_f, generator=g) / 11)
    x[:, 3] *= 10
    return w, x


def _gptq_by_columns(w, h, bits, group, damp):
    """The textbook loop (no lazy batches, no batching): the notebook's fast version must give the same weights."""
    w = w.float().clone()
    h = h + damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0])
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    qmax, out = 2**bits - 1, torch.zeros_like(w)
    for j in range(w.shape[1]):
        if group is None and j == 0 or group is not None and j % group == 0:
            span = w if group is None else w[:, j:j + group]
            lo = span.amin(1, keepdim=True)
            scale = (span.amax(1, keepdim=True) - lo).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round((w[:, j:j + 1] - lo) / scale), 0, qmax) * scale + lo
        out[:, j:j + 1] = q
        w[:, j + 1:] -= (w[:, j:j + 1] - q) / u[j, j] @ u[j:j + 1, j + 1:]
    return out


@pytest.mark.parametrize("group", [None, 32])
def test_gptq_lazy_batched_equals_the_column_loop(group):
    ws, hs = zip(*[(w, x.T @ x) for w, x in (_layer(s) for s in range(3))])
    batched = NB.gptq_quantize(torch.stack(ws), torch.stack(hs), 4, group, damp=0.05, block=64)
    for w, h, q in zip(ws, hs, batched):
        want = _gptq_by_columns(w, h, 4, group, 0.05)
        assert (q - want).abs().max() < 1e-5
        assert torch.equal(NB.gptq_quantize(w, h, 4, group, damp=0.05, block=64), q)


def test_gptq_per_row_bits_equal_separate_runs_and_act_order_keeps_static_grids():
    w, x = _layer(1)
    h = x.T @ x
    both = NB.gptq_quantize(torch.cat([w, w]), h, torch.tensor([4] * 24 + [3] * 24), 32, damp=0.05)
    assert torch.equal(both[:24], NB.gptq_quantize(w, h, 4, 32, damp=0.05))
    assert torch.equal(both[24:], NB.gptq_quantize(w, h, 3, 32, damp=0.05))
    q = NB.gptq_quantize(w, h, 4, 32, damp=0.05, act_order=True, static_groups=True)
    static = NB.quantize_rtn(w, 4, 32).reshape(24, 4, 32)  # each group keeps its original grid
    lo, hi = w.reshape(24, 4, 32).amin(-1, keepdim=True), w.reshape(24, 4, 32).amax(-1, keepdim=True)
    codes = (q.reshape(24, 4, 32) - lo) / ((hi - lo) / 15)
    assert (codes - codes.round()).abs().max() < 1e-3 and codes.min() > -1e-3 and codes.max() < 15 + 1e-3
    assert not torch.equal(q.reshape_as(static), static)                # ... but different codes: errors were spread


def test_gptq_rejects_bad_arguments():
    w, x = _layer(2)
    h = x.T @ x
    with pytest.raises(ValueError, match="static_groups"):
        NB.gptq_quantize(w, h, 4, 32, act_order=True)
    with pytest.raises(ValueError, match="bits must be 2..8"):
        NB.gptq_quantize(w, h, 9, 32)
    with pytest.raises(ValueError, match="damp"):
        NB.gptq_quantize(w, h, 4, 32, damp=0)
    with pytest.raises(ValueError, match="h must be"):
        NB.gptq_quantize(w, h[:64, :64], 4, 32)


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                      # non-trivial norms, so a wrong norm is noticed
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def test_awq_fold_is_exact_and_folded_quantized_equals_simulated():
    """Folding AWQ's scales changes nothing in fp32; after RTN, the folded model (norms and up_proj rows scaled, no
    hooks) gives the logits of the simulated one, Q(W·s)·diag(1/s) with the original norms."""
    import copy

    m = _tiny_llama()
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(ids).logits
    g = torch.Generator().manual_seed(5)
    scales = [[torch.rand(k, generator=g) * 4 + 0.25 for k in (128, 128, 256)] for _ in m.model.layers]
    folded = copy.deepcopy(m)
    for layer, s in zip(folded.model.layers, scales):
        NB.awq_fold(layer, *s)
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, ref, rtol=1e-4, atol=1e-4)
    sim = copy.deepcopy(m)
    for lf, ls, (s_qkv, s_mlp, s_down) in zip(folded.model.layers, sim.model.layers, scales):
        s_in = {"q_proj": s_qkv, "k_proj": s_qkv, "v_proj": s_qkv, "o_proj": torch.ones(128), "gate_proj": s_mlp,
                "up_proj": s_mlp, "down_proj": s_down}
        for mod_f, mod_s in ((lf.self_attn, ls.self_attn), (lf.mlp, ls.mlp)):
            for name, lin in mod_f.named_children():
                if isinstance(lin, torch.nn.Linear):
                    lin.weight.data.copy_(NB.quantize_rtn(lin.weight.data, 4, 32))
                    w = lin.weight.data / s_in[name]
                    if name == "up_proj":
                        w = w * s_down[:, None]
                    getattr(mod_s, name).weight.data.copy_(w)
    with torch.no_grad():
        a, b = folded(ids).logits, sim(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - ref).abs().max() > 1e-3                # the quantization did change the model
    wrong = copy.deepcopy(sim)                         # a fold that forgets up_proj's rows is caught
    for lw, ls, s in zip(wrong.model.layers, sim.model.layers, scales):
        lw.mlp.up_proj.weight.data.copy_(ls.mlp.up_proj.weight.data / s[2][:, None])
    with torch.no_grad():
        assert not torch.allclose(wrong(ids).logits, a, rtol=1e-3, atol=1e-3)


def test_awq_clip_never_increases_the_group_output_error_and_rejects_bad_groups():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 128, generator=g)
    x = torch.randn(64, 128, generator=g)
    c = NB.awq_clip(w, x, 4, 32)
    assert c.shape == w.shape and (c.abs() <= w.abs() + 1e-6).all()

    def group_err(wc):
        d = (w - NB.quantize_rtn(wc, 4, 32)).reshape(16, 4, 32)
        return torch.einsum("nkg,okg->okn", x.reshape(-1, 4, 32), d).pow(2).mean(-1)

    assert (group_err(c) <= group_err(w) + 1e-6).all()
    assert (c != w).any()                           # some groups are clipped
    with pytest.raises(ValueError, match="does not divide"):
        NB.awq_clip(w, x, 4, 48)


@pytest.mark.parametrize("kw", [{}, dict(act_order=True, static_groups=True)])
def test_gptq_return_grid_reproduces_its_weights_with_integer_codes(kw):
    """The grids GPTQ returns are the ones its weights lie on: an int4 kernel can store them exactly."""
    w, x = _layer(1)
    q, scale, lo = NB.gptq_quantize(w, x.T @ x, 4, 32, damp=0.05, return_grid=True, **kw)
    assert scale.shape == lo.shape == (w.shape[0], w.shape[1] // 32)
    codes = (q.reshape(w.shape[0], -1, 32) - lo[..., None]) / scale[..., None]
    assert (codes - codes.round()).abs().max() < 1e-3 and codes.min() > -1e-3 and codes.max() < 15 + 1e-3
    assert torch.equal(q, NB.gptq_quantize(w, x.T @ x, 4, 32, damp=0.05, **kw))
    with pytest.raises(ValueError, match="return_grid"):
        NB.gptq_quantize(w, x.T @ x, 4, None, return_grid=True)
