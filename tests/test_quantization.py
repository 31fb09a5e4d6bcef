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
