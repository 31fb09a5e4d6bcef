"""utils.pruning against independent reference formulas on synthetic layers, structured surgery == masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils import pruning


def _layer(seed: int = 0, out_f: int = 64, in_f: int = 128, tokens: int = 2048):
    """A layer whose inputs have correlated features of very different scale (as in LLMs)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(in_f, generator=g))
    mix = torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g) / in_f ** 0.5
    x = (torch.randn(tokens, in_f, generator=g) * scale) @ mix
    w = torch.randn(out_f, in_f, generator=g)
    return w, x[0::2], x[1::2]


def test_wanda_matches_a_numpy_reference_per_row():
    w, x, _ = _layer()
    got = pruning.wanda_mask(w, x.norm(dim=0), 0.5).numpy()
    score = np.abs(w.numpy()) * np.sqrt((x.numpy().astype(np.float64) ** 2).sum(0))[None, :]
    for r in range(w.shape[0]):
        drop = np.argsort(score[r], kind="stable")[: w.shape[1] // 2]
        want = np.ones(w.shape[1], bool)
        want[drop] = False
        assert (got[r] == want).all(), r


def test_magnitude_per_matrix_and_per_row_counts():
    w, _, _ = _layer()
    keep = pruning.magnitude_mask(w, 0.3)
    assert (~keep).sum() == int(w.numel() * 0.3)
    assert w.abs()[~keep].max() <= w.abs()[keep].min()
    rows = pruning.magnitude_mask(w, 0.3, per="row")
    assert ((~rows).sum(1) == int(w.shape[1] * 0.3)).all()


def test_keep_mask_exact_count_with_ties():
    score = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 0.0]])
    keep = pruning.keep_mask(score, 0.5)
    assert (~keep).sum() == 3 and not keep[0, 5] and keep[0, 4]


def test_thresholds_agree_with_keep_mask():
    w, x, _ = _layer(1)
    sc = pruning.wanda_score(w, x.norm(dim=0))
    th = pruning.thresholds(sc, [0.0, 0.3, 0.5], per="row")
    for s in (0.0, 0.3, 0.5):
        assert torch.equal(sc > th[s], pruning.keep_mask(sc, s, per="row"))
    thm = pruning.thresholds(w.abs()[None], [0.5], per="matrix")[0.5]
    assert torch.equal(w.abs()[None] > thm, pruning.magnitude_mask(w[None], 0.5))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_have_exactly_n_per_group(n, m):
    w, x, _ = _layer()
    for keep in (pruning.magnitude_mask(w, n=n, m=m), pruning.wanda_mask(w, x.norm(dim=0), n=n, m=m)):
        assert ((keep.reshape(w.shape[0], -1, m)).sum(-1) == n).all()
    q = pruning.sparsegpt_prune(w, x.T @ x, n=n, m=m)
    assert ((q.reshape(w.shape[0], -1, m) != 0).sum(-1) <= n).all()
    assert ((q.reshape(w.shape[0], -1, m) != 0).sum(-1) == n).float().mean() > 0.99


def test_sparsegpt_beats_magnitude_and_wanda_on_held_out_inputs():
    for seed in range(3):
        w, x_fit, x_held = _layer(seed)
        h = x_fit.T @ x_fit
        errs = {name: pruning.output_error(w, q, x_held) for name, q in [
            ("magnitude", w * pruning.magnitude_mask(w, 0.5)),
            ("wanda", w * pruning.wanda_mask(w, x_fit.norm(dim=0), 0.5)),
            ("sparsegpt", pruning.sparsegpt_prune(w, h, 0.5))]}
        assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs
        q24 = pruning.sparsegpt_prune(w, h, n=2, m=4)
        assert pruning.output_error(w, q24, x_held) < pruning.output_error(w, w * pruning.magnitude_mask(w, n=2, m=4),
                                                                             x_held)


def test_sparsegpt_equals_the_closed_form_optimum_when_the_pruned_columns_come_first():
    """Pruning columns 0..k-1 one after another with OBS updates = least squares on the remaining columns."""
    g = torch.Generator().manual_seed(0)
    k, in_f = 3, 8
    x = torch.randn(400, in_f, generator=g, dtype=torch.float64) @ torch.randn(in_f, in_f, generator=g,
                                                                            dtype=torch.float64)
    w = torch.randn(5, in_f, generator=g, dtype=torch.float64)
    w[:, :k] *= 1e-3                                  # so the saliency picks exactly the first k columns
    h = x.T @ x
    damp = 1e-6
    got = pruning.sparsegpt_prune(w, h, k / in_f, damp=damp, block=8, lazy=8).double()
    assert (got[:, :k] == 0).all() and (got[:, k:] != 0).all()
    hd = h + damp * torch.diagonal(h).mean() * torch.eye(in_f, dtype=torch.float64)
    want = torch.linalg.solve(hd[k:, k:], hd[k:, :] @ w.T).T
    assert torch.allclose(got[:, k:], want, rtol=1e-4, atol=1e-4)


def test_sparsegpt_lazy_block_size_does_not_change_the_result():
    w, x, _ = _layer(2, 16, 256)
    h = x.T @ x
    a = pruning.sparsegpt_prune(w, h, 0.5, lazy=128)
    b = pruning.sparsegpt_prune(w, h, 0.5, lazy=16)
    assert torch.equal(a == 0, b == 0) and torch.allclose(a, b, atol=1e-4)


def test_sparsegpt_batched_equals_one_by_one():
    w1, x1, _ = _layer(0, 8, 64)
    w2, x2, _ = _layer(1, 8, 64)
    both = pruning.sparsegpt_prune(torch.stack([w1, w2]), torch.stack([x1.T @ x1, x2.T @ x2]), 0.5)
    assert torch.allclose(both[0], pruning.sparsegpt_prune(w1, x1.T @ x1, 0.5), atol=1e-5)
    assert torch.allclose(both[1], pruning.sparsegpt_prune(w2, x2.T @ x2, 0.5), atol=1e-5)


def test_bad_input_is_refused():
    w, x, _ = _layer()
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="sparsity"):
            pruning.magnitude_mask(w, bad)
    with pytest.raises(ValueError, match="n must be < m"):
        pruning.magnitude_mask(w, n=4, m=4)
    with pytest.raises(ValueError, match="not divisible"):
        pruning.magnitude_mask(torch.randn(4, 10), n=2, m=4)
    with pytest.raises(ValueError, match="either sparsity"):
        pruning.sparsegpt_prune(w, x.T @ x, 0.5, n=2, m=4)
    with pytest.raises(ValueError, match="xtx"):
        pruning.sparsegpt_prune(w, torch.eye(3), 0.5)
    with pytest.raises(ValueError, match="features"):
        pruning.wanda_score(w, torch.ones(3))


# --------------------------------------------------------------------------- structured surgery on a tiny Llama
@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_removing_heads_equals_masking_them(tiny_llama):
    import copy

    attn = tiny_llama.model.layers[1].self_attn
    hd = attn.head_dim
    heads = [1, 4]                                    # one from each of the two key/value groups (3 heads each)
    masked = copy.deepcopy(tiny_llama)
    o = masked.model.layers[1].self_attn.o_proj
    for h in heads:
        o.weight.data[:, h * hd:(h + 1) * hd] = 0     # zeroing o_proj's columns = masking the head's output
    small = copy.deepcopy(tiny_llama)
    pruning.remove_heads(small.model.layers[1].self_attn, heads, n_kv=2)
    assert small.model.layers[1].self_attn.q_proj.weight.shape[0] == 4 * hd
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, masked(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="same number"):
        pruning.remove_heads(copy.deepcopy(attn), [0, 1], n_kv=2)
    with pytest.raises(ValueError, match="cannot remove"):
        pruning.remove_heads(copy.deepcopy(attn), list(range(6)), n_kv=2)
    with pytest.raises(ValueError, match="head indices"):
        pruning.remove_heads(copy.deepcopy(attn), [7], n_kv=2)


def test_removing_ffn_channels_and_blocks(tiny_llama):
    import copy

    small = copy.deepcopy(tiny_llama)
    masked = copy.deepcopy(tiny_llama)
    cut = torch.tensor([0, 5, 17, 39])
    pruning.remove_ffn_channels(small.model.layers[0].mlp, cut)
    masked.model.layers[0].mlp.down_proj.weight.data[:, cut] = 0
    ids = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, masked(ids).logits, atol=1e-5)
    skip = copy.deepcopy(tiny_llama)
    pruning.remove_blocks(skip, [1])
    assert len(skip.model.layers) == 2 and skip.model.layers[1].self_attn.layer_idx == 1
    with torch.no_grad():
        out = skip(ids).logits
    assert out.shape == (1, 10, 50)
    with pytest.raises(ValueError, match="cannot remove"):
        pruning.remove_blocks(copy.deepcopy(tiny_llama), [0, 1, 2])
    with pytest.raises(ValueError, match="cannot remove"):
        pruning.remove_ffn_channels(copy.deepcopy(tiny_llama).model.layers[0].mlp, torch.arange(40))


def test_pruned_models_run_in_the_course_decoder(tiny_llama):
    import copy

    from utils.decoder import StaticCacheDecoder

    m = copy.deepcopy(tiny_llama)
    pruning.remove_heads(m.model.layers[0].self_attn, [0, 3], n_kv=2)
    pruning.remove_ffn_channels(m.model.layers[2].mlp, torch.arange(10))
    pruning.remove_blocks(m, [1])
    ids = torch.randint(0, 50, (6,))
    out = StaticCacheDecoder(m, max_len=16).generate(ids, 5)
    with torch.no_grad():
        greedy = m.generate(ids[None], max_new_tokens=5, do_sample=False)[0, 6:].tolist()
    assert out.tokens == greedy
