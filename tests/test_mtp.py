"""The MTP module matches DeepSeek-V3's specification (eqs. 21-23) and works as a speculative draft; low-bit linears
match their fake-quantized references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils import lowbit, mtp
from utils.decoder import StaticCacheDecoder
from utils.model import sharp_tiny_llama


def _tiny_llama(seed: int = 0):
    return sharp_tiny_llama(vocab_size=61, hidden_size=32, num_hidden_layers=2, head_dim=8, std=0.4, seed=seed)


@pytest.fixture(scope="module")
def tiny():
    return _tiny_llama()


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_mtp_forward_matches_the_specification(tiny):
    from transformers import LlamaModel

    m = mtp.MTPModule(tiny, init_block_from_last_layer=False)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.normal_(std=0.3)
    assert m.embed.weight is tiny.get_input_embeddings().weight and m.head.weight is tiny.lm_head.weight
    g = torch.Generator().manual_seed(0)
    h, nxt = torch.randn(2, 9, 32, generator=g) * 3, torch.randint(0, 61, (2, 9), generator=g)
    eps = tiny.config.rms_norm_eps
    # eq. 21: h' = M [RMSNorm(h) ; RMSNorm(Emb(t+1))]
    x = torch.cat([_rms(h, m.hnorm.weight, eps), _rms(m.embed(nxt), m.enorm.weight, eps)], -1) @ m.proj.weight.T
    # eq. 22-23: one causal transformer block, then the shared head (through the module's output norm); built here
    # as a one-layer transformers LlamaModel whose layer and final norm are the module's
    ref = LlamaModel(tiny.config)
    ref.layers = torch.nn.ModuleList([m.block])
    ref.norm = m.out_norm
    ref.eval()
    with torch.no_grad():
        want = tiny.lm_head(ref(inputs_embeds=x).last_hidden_state)
        got = m(h, nxt)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    # causal: position i does not see positions after it
    h2 = h.clone()
    h2[:, 5:] += 1.0
    with torch.no_grad():
        got2 = m(h2, nxt)
    assert torch.allclose(got2[:, :5], got[:, :5], atol=1e-5) and not torch.allclose(got2[:, 5:], got[:, 5:])


def test_mtp_loss_scores_the_token_after_next(tiny):
    m = mtp.MTPModule(tiny, init_block_from_last_layer=False)
    g = torch.Generator().manual_seed(1)
    h, t = torch.randn(2, 12, 32, generator=g), torch.randint(0, 61, (2, 12), generator=g)
    want = F.cross_entropy(m(h[:, :-2], t[:, 1:-1]).flatten(0, 1), t[:, 2:].flatten())
    assert torch.allclose(mtp.mtp_loss(m, h, t), want)
    with pytest.raises(ValueError, match="S >= 3"):
        mtp.mtp_loss(m, h[:, :2], t[:, :2])


def test_training_lowers_the_loss_and_leaves_the_shared_weights(tiny):
    m = mtp.MTPModule(tiny, init_block_from_last_layer=False)
    ids = torch.arange(200) % 13 + 3                                     # a periodic stream: t+2 is learnable
    H = mtp.target_hidden_states(tiny, ids, window=50)
    head = tiny.lm_head.weight.clone()
    losses = mtp.train_mtp(m, H, ids[: H.shape[0]], steps=40, seq_len=32, batch=4, lr=1e-2)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert torch.equal(head, tiny.lm_head.weight)
    acc = mtp.acceptance_by_position(m, H, ids[: H.shape[0]], depth=2, window=16)
    assert acc[0] > 0.5 and 0 <= acc[1] <= 1
    tiny.lm_head.weight.requires_grad_(True)


def test_mtp_draft_gives_greedy_tokens_in_speculative_decoding(tiny):
    m = mtp.MTPModule(tiny, init_block_from_last_layer=False)
    dec = StaticCacheDecoder(tiny, max_len=64)
    p = torch.tensor([3, 4, 5, 6, 3, 4, 5])
    want = dec.generate(p, 20).tokens
    draft = mtp.MTPDraft(m, window=8)
    for k in (1, 3):
        r = dec.speculative_generate(p, 20, draft, k=k)
        assert r.tokens == want and r.drafted > 0
    with pytest.raises(ValueError, match="window"):
        mtp.MTPDraft(m, window=0)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lowbit_linears_match_their_fake_quantized_weights(kind):
    from utils.quant import fake_quantize_int

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64, bias=False)
    x = torch.randn(3, 128)
    if kind == "int8":
        q = lowbit.Int8WeightOnlyLinear(lin)
        w = fake_quantize_int(lin.weight.detach(), 8, (1, -1), symmetric=True)
    else:
        q = lowbit.Int4WeightOnlyLinear(lin, group=32)
        wg = lin.weight.detach().reshape(64, 4, 32)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        s = (hi - lo) / 15
        w = (torch.round((wg - lo) / s).clamp(0, 15) * s + lo).reshape(64, 128)
    want = x.bfloat16().float() @ w.T
    got = q(x).float()
    assert (got - want).abs().max() < 0.03 * want.abs().max()


def test_quantized_copy_keeps_rope_in_fp32_and_rejects_bad_formats(tiny):
    qm = lowbit.quantized_copy(tiny, "int8", head="int8")
    assert qm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert isinstance(qm.lm_head, lowbit.Int8WeightOnlyLinear) and tiny.lm_head.weight.dtype == torch.float32
    assert lowbit.weight_bytes_per_token(qm) < 0.5 * lowbit.weight_bytes_per_token(tiny)
    with pytest.raises(ValueError, match="blocks must be"):
        lowbit.quantized_copy(tiny, "int3")
    with pytest.raises(ValueError, match="group"):
        lowbit.Int4WeightOnlyLinear(torch.nn.Linear(64, 64, bias=False), group=48)


def test_feature_distillation_teaches_the_targets_own_next_token(tiny):
    ids = torch.arange(300) % 17 + 3
    H = mtp.target_hidden_states(tiny, ids, window=60)
    ids = ids[: H.shape[0]]
    greedy = mtp.greedy_next(tiny, H)
    with torch.no_grad():
        want = tiny.lm_head(tiny.model.norm(H)).argmax(-1)
    assert torch.equal(greedy, want) and greedy.shape == ids.shape
    torch.manual_seed(0)
    m = mtp.MTPModule(tiny)
    before = mtp.first_draft_hits(m, H, ids, greedy).mean()
    norm_w, head = m.out_norm.weight.clone(), tiny.lm_head.weight.clone()
    losses = mtp.train_mtp(m, H, ids, steps=60, seq_len=32, batch=4, lr=1e-2, target_norm=tiny.model.norm)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert torch.equal(norm_w, m.out_norm.weight) and torch.equal(head, tiny.lm_head.weight)
    after = mtp.first_draft_hits(m, H, ids, greedy).mean()
    assert after > max(0.5, before)
    # the loss is the specification: smooth L1 between out_norm(state_i) and the target's norm(h_{i+1})
    h, t = H[None, :20], ids[None, :20]
    want_loss = F.smooth_l1_loss(m.out_norm(m.states(h[:, :-1], t[:, 1:])), tiny.model.norm(h[:, 1:]))
    assert torch.allclose(mtp.feature_loss(m, h, t, tiny.model.norm), want_loss)
    with pytest.raises(ValueError, match="same N positions"):
        mtp.first_draft_hits(m, H, ids[:-1], greedy)
    tiny.lm_head.weight.requires_grad_(True)


def test_m1_matmul_rates_cover_every_projection(tiny):
    rates = lowbit.m1_matmul_rates(lowbit.quantized_copy(tiny, "int8", head="int8"), repeats=1)
    assert set(rates) == {*lowbit.PROJECTIONS, "lm_head"}
    assert all(s > 0 and b > 0 for s, b in rates.values())
    q = rates["q_proj"][1]
    assert q == tiny.config.num_hidden_layers * (32 * 32 * 1 + 32 * 2)      # int8 weights + bf16 scales


def test_quantized_copy_picks_a_kernel_per_projection(tiny):
    qm = lowbit.quantized_copy(tiny, "int4", head="int8", per_projection={"down_proj": "int8", "q_proj": "bf16"})
    layer = qm.model.layers[0]
    assert isinstance(layer.mlp.down_proj, lowbit.Int8WeightOnlyLinear)
    assert isinstance(layer.self_attn.q_proj, torch.nn.Linear) and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert isinstance(layer.mlp.up_proj, lowbit.Int4WeightOnlyLinear)
    with pytest.raises(ValueError, match="per_projection"):
        lowbit.quantized_copy(tiny, "int4", per_projection={"attn": "int8"})


def test_int4_linear_keeps_a_given_grid_that_min_max_would_not_find():
    """GPTQ's groups need not use codes 0 and 15: with its grid the kernel stores its weights exactly."""
    g = torch.Generator().manual_seed(0)
    n, k = 16, 64
    codes = torch.randint(2, 14, (n, k), generator=g).float()        # never 0, 1, 14 or 15
    scale, lo = torch.full((n, k // 32), 2.0**-4), torch.full((n, k // 32), -0.5)   # exact in bf16 (zero = 0)
    w = codes * 2.0**-4 - 0.5
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data.copy_(w)
    x = torch.randn(3, k, generator=g)
    want = x.bfloat16().float() @ w.T
    exact = lowbit.Int4WeightOnlyLinear(lin, group=32, grid=(scale, lo))
    regrid = lowbit.Int4WeightOnlyLinear(lin, group=32)
    err_exact, err_regrid = ((exact(x).float() - want).abs().max().item(),
                             (regrid(x).float() - want).abs().max().item())
    assert err_exact < 0.02 * want.abs().max() and err_exact < 0.5 * err_regrid
    with pytest.raises(ValueError, match="positive"):
        lowbit.Int4WeightOnlyLinear(lin, group=32, grid=(torch.zeros_like(scale), lo))


def test_quantized_copy_takes_grids(tiny):
    w = tiny.model.layers[0].mlp.up_proj.weight.detach()
    wg = w.reshape(w.shape[0], -1, 32)
    lo = wg.amin(-1)
    scale = (wg.amax(-1) - lo).clamp(min=1e-8) / 15
    qm = lowbit.quantized_copy(tiny, "int4", group=32, grids={"model.layers.0.mlp.up_proj": (scale, lo)})
    plain = lowbit.quantized_copy(tiny, "int4", group=32)
    a, b = qm.model.layers[0].mlp.up_proj, plain.model.layers[0].mlp.up_proj
    assert torch.equal(a.packed, b.packed) and torch.equal(a.scales_zeros, b.scales_zeros)   # min-max grid: same
    with pytest.raises(ValueError, match="not int4 block projections"):
        lowbit.quantized_copy(tiny, "int4", grids={"model.layers.0.mlp.nope": (scale, lo)})
