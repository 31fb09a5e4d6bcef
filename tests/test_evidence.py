"""Paired per-token comparisons: scoring windows, block-bootstrap coverage, verdicts, paired seeds, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal, stats

from utils import evidence as ev
from utils.tinylm import TinyConfig, TinyLM


# --------------------------------------------------------------------------- synthetic paired series
def ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary AR(1) series with unit innovations (correlation phi between neighbours)."""
    e = rng.normal(size=n)
    e[0] /= math.sqrt(1 - phi**2)
    return signal.lfilter([1.0], [1.0, -phi], e)


def paired_series(n: int, delta: float, phi: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two per-token 'NLL' series: shared text difficulty plus an autocorrelated difference of true mean delta."""
    rng = np.random.default_rng(seed)
    common = 3 + ar1(n, 0.95, rng)
    diff = delta + 0.3 * ar1(n, phi, rng)
    return common + diff, common


def test_interval_formats_with_minus_signs_and_level():
    iv = ev.Interval(-0.012, -0.020, -0.004, 0.95)
    assert str(iv) == "\u22120.012 [\u22120.020, \u22120.004] (95%)"
    assert str(ev.Interval(0.45, 0.434, 0.466, 0.9)) == "0.450 [0.434, 0.466] (90%)"
    assert str(ev.Interval(0.45, 0.42, 0.48, 0.95)) == "0.45 [0.42, 0.48] (95%)"
    assert f"{iv:.3f}" == "\u22120.012 [\u22120.020, \u22120.004] (95%)"
    assert iv.half_width == pytest.approx(0.008) and iv.contains(-0.01) and not iv.contains(0.0)
    with pytest.raises(AttributeError):
        iv.low = 0.0  # frozen


def test_block_bootstrap_covers_the_true_difference_at_its_nominal_rate():
    delta, n_seeds = 0.05, 200
    hits = 0
    for seed in range(n_seeds):
        a, b = paired_series(8192, delta, phi=0.9, seed=seed)
        iv = ev.paired_interval(a, b, block=256, n_resamples=1000, seed=seed)
        hits += iv.contains(delta)
    # 95% nominal: 190 of 200 expected; a two-sided binomial test at the 0.1% level
    assert stats.binomtest(hits, n_seeds, 0.95).pvalue > 1e-3, hits


def test_iid_bootstrap_under_covers_on_autocorrelated_tokens():
    delta, n_seeds = 0.05, 30
    hits_iid = hits_block = 0
    for seed in range(n_seeds):
        a, b = paired_series(8192, delta, phi=0.9, seed=seed)
        hits_iid += ev.paired_interval(a, b, block=1, n_resamples=300, seed=seed, method="percentile").contains(delta)
        hits_block += ev.paired_interval(a, b, block=256, n_resamples=1000, seed=seed).contains(delta)
    # variance of the mean is (1+phi)/(1-phi) = 19x what iid resampling assumes: about 35% coverage
    assert hits_iid / n_seeds < 0.6 < 0.85 < hits_block / n_seeds, (hits_iid, hits_block)


def test_paired_interval_is_narrower_than_treating_the_models_as_independent():
    a, b = paired_series(8192, 0.05, phi=0.5, seed=0)
    paired = ev.paired_interval(a, b, block=256)
    ia, ib = ev.mean_interval(a, block=256), ev.mean_interval(b, block=256)
    assert paired.half_width < 0.5 * math.hypot(ia.half_width, ib.half_width)
    assert paired.estimate == pytest.approx(float(np.mean(a - b)))


def test_delta_ppl_and_mean_kl():
    a, b = paired_series(8192, 0.05, phi=0.5, seed=1)
    d = ev.delta_ppl(a, b, block=256)
    assert d.estimate == pytest.approx(math.exp(a.mean()) - math.exp(b.mean()))
    assert d.low < d.estimate < d.high and d.low > 0
    assert ev.delta_ln_ppl(a, b, block=256) == ev.delta_nll(a, b, block=256) == ev.paired_interval(a, b, block=256)
    kl = np.abs(np.random.default_rng(0).normal(size=4096)) * 0.01
    m = ev.mean_kl(kl, block=64)
    assert 0 < m.low < kl.mean() < m.high


def test_identical_models_give_a_zero_width_interval():
    a, _ = paired_series(4096, 0.0, phi=0.5, seed=4)
    assert ev.paired_interval(a, a.copy(), block=128) == ev.Interval(0.0, 0.0, 0.0, 0.95)
    assert ev.verdict(ev.paired_interval(a, a.copy(), block=128), "less") == "not resolved"


def test_results_are_deterministic_per_seed():
    a, b = paired_series(4096, 0.0, phi=0.5, seed=2)
    assert ev.paired_interval(a, b, block=128, seed=3) == ev.paired_interval(a, b, block=128, seed=3)


def test_verdict_returns_all_three_outcomes():
    better, b = paired_series(8192, -0.2, phi=0.5, seed=0)
    same, _ = paired_series(8192, 0.0, phi=0.5, seed=0)
    iv_better = ev.paired_interval(better, b, block=256)
    assert ev.verdict(iv_better, "less") == "holds"
    assert ev.verdict(iv_better, "greater") == "fails"
    iv_same = ev.paired_interval(same - 0.3 * ar1(8192, 0.5, np.random.default_rng(9)), b, block=256)
    assert ev.verdict(iv_same, "less") == "not resolved" or ev.verdict(iv_same, "greater") == "not resolved"
    constructed = {
        (-0.3, -0.1): ("holds", "fails"), (-0.1, 0.1): ("not resolved", "not resolved"), (0.1, 0.3): ("fails", "holds")}
    for (lo, hi), (less, greater) in constructed.items():
        iv = ev.Interval((lo + hi) / 2, lo, hi, 0.95)
        assert (ev.verdict(iv, "less"), ev.verdict(iv, "greater")) == (less, greater)
    assert set(ev.VERDICTS) == {"holds", "not resolved", "fails"}


def test_verdict_thresholds_and_within():
    iv = ev.Interval(0.004, 0.001, 0.007, 0.95)
    assert ev.verdict(iv, "less") == "fails"
    assert ev.verdict(iv, "less", threshold=0.01) == "holds"            # non-inferiority: costs < 0.01
    assert ev.verdict(iv, "less", threshold=0.005) == "not resolved"
    assert ev.verdict(iv, "within", threshold=0.01) == "holds"
    assert ev.verdict(iv, "within", threshold=0.005) == "not resolved"
    assert ev.verdict(iv, "within", threshold=0.0005) == "fails"
    assert ev.verdict(ev.Interval(-0.02, -0.03, -0.01, 0.95), "less", threshold=-0.005) == "holds"
    line = ev.claim_line("int8 costs < 0.01 nats", iv, "less", 0.01, unit="nats", spec=".3f")
    assert line == "int8 costs < 0.01 nats: 0.004 [0.001, 0.007] (95%) nats -> holds"


# --------------------------------------------------------------------------- scoring windows (a tiny LM, no download)
@pytest.fixture(scope="module")
def tiny():
    cfg = TinyConfig(d_model=32, n_layers=2, n_heads=4, context=32)
    return TinyLM(cfg, seed=0).eval(), TinyLM(cfg, seed=1).eval()


@pytest.fixture(scope="module")
def stream():
    return torch.randint(0, 256, (203,), generator=torch.Generator().manual_seed(0))


def brute_force_nll(model, ids, window, stride):
    """NLL of every token, scored the slow way: one window per scored token."""
    out = {}
    starts = range(0, len(ids) - window + 1, window if stride is None else stride)
    for j, s in enumerate(starts):
        x = ids[s:s + window][None]
        with torch.no_grad():
            nll = F.cross_entropy(model(x)[0][0, :-1], x[0, 1:], reduction="none")
        first = 1 if stride is None or j == 0 else window - stride
        for c in range(first, window):
            assert s + c not in out
            out[s + c] = float(nll[c - 1])
    return out


@pytest.mark.parametrize("stride", [None, 5, 15])
def test_token_nll_matches_brute_force_in_stream_order(tiny, stream, stride):
    m, _ = tiny
    nll = ev.token_nll(m, stream, window=16, stride=stride, batch_size=3)
    pos = ev.scored_positions(stream.numel(), 16, stride)
    ref = brute_force_nll(m, stream, 16, stride)
    assert pos.tolist() == sorted(ref) and nll.shape == pos.shape
    torch.testing.assert_close(nll, torch.tensor([ref[p] for p in pos.tolist()]), atol=1e-5, rtol=1e-5)
    if stride is not None:
        assert pos.tolist() == list(range(1, pos.numel() + 1))  # every token from 1 on, once, in order
    assert torch.equal(nll, ev.token_nll(m, stream, window=16, stride=stride, batch_size=3))  # deterministic
    torch.testing.assert_close(nll, ev.token_nll(m, stream, window=16, stride=stride, batch_size=1))


def test_compare_models_gives_aligned_nll_and_exact_kl(tiny, stream):
    m0, m1 = tiny
    nll0, nll1, kl = ev.compare_models(m0, m1, stream, window=16, stride=None, batch_size=4)
    torch.testing.assert_close(nll0, ev.token_nll(m0, stream, window=16))
    torch.testing.assert_close(nll1, ev.token_nll(m1, stream, window=16))
    x = stream[:16][None]
    with torch.no_grad():
        lp0, lp1 = (torch.log_softmax(mm(x)[0][0, :-1], -1) for mm in (m0, m1))
    kl_ref = F.kl_div(lp1, lp0, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(ev.kl_from_logprobs(lp0, lp1), kl_ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        ev.kl_from_logprobs(lp0, lp1[:-1])
    torch.testing.assert_close(kl[:15], kl_ref, atol=1e-6, rtol=1e-5)
    assert (kl > 0).all()
    _, _, kl_self = ev.compare_models(m0, m0, stream, window=16)
    assert kl_self.abs().max() < 1e-6
    torch.testing.assert_close(ev.token_kl(m0, m1, stream, window=16), kl)


def test_scoring_leaves_the_grad_mode_alone(tiny, stream):
    m0, m1 = tiny
    ev.compare_models(m0, m1, stream, window=16)
    it = ev.iter_logprobs(m0, stream, window=16)
    _, lp = next(it)                      # a generator left half-consumed must not leave no_grad switched on
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and not lp.requires_grad
    del it


# --------------------------------------------------------------------------- seeds
def test_paired_seeds_and_seed_interval():
    assert ev.paired_seeds() == [0, 1, 2] and ev.paired_seeds(4, base=10) == [10, 11, 12, 13]
    a, b = [1.70, 1.74, 1.69], [1.80, 1.86, 1.78]
    iv = ev.seed_interval(a, b)
    d = np.subtract(a, b)
    hw = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert iv.estimate == pytest.approx(d.mean()) and iv.half_width == pytest.approx(hw)
    assert ev.verdict(iv, "less") == "holds"
    assert ev.seed_summary(a, b, unit="nats", spec=".3f") == (
        f"\u2212{-d.mean():.3f} \u00b1 {hw:.3f} nats over 3 paired seeds (95% t-interval)")
    assert ev.seed_interval([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == ev.Interval(0.5, 0.5, 0.5, 0.95)
    calls = []
    runs = ev.run_paired(lambda v, s: calls.append((v, s)) or s * (2 if v == "b" else 1), ["a", "b"], [0, 1, 2])
    assert runs == {"a": [0, 1, 2], "b": [0, 2, 4]} and calls[:3] == [("a", 0), ("a", 1), ("a", 2)]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"level": 0.0}, "level"), ({"level": 1.0}, "level"), ({"level": 95}, "level"),
    ({"block": 0}, "block"), ({"block": 1000}, "blocks"),
    ({"ids_a": [1, 2, 3], "ids_b": [1, 2, 4]}, "differ"), ({"ids_a": [1, 2, 3], "ids_b": [1, 2]}, "length"),
    ({"ids_a": [1, 2, 3]}, "neither"), ({"n_resamples": 10}, "n_resamples"),
])
def test_paired_interval_rejects_bad_input(kwargs, match):
    a, b = np.zeros(2048), np.ones(2048)
    with pytest.raises(ValueError, match=match):
        ev.paired_interval(a, b, **kwargs)


def test_mismatched_or_broken_series_are_refused():
    with pytest.raises(ValueError, match="same tokens"):
        ev.paired_interval(np.zeros(2048), np.zeros(2047))
    with pytest.raises(ValueError, match="non-finite"):
        ev.paired_interval(np.r_[np.zeros(2047), np.nan], np.zeros(2048))
    with pytest.raises(ValueError, match="1-D"):
        ev.paired_interval(np.zeros((2, 2048)), np.zeros((2, 2048)))
    with pytest.raises(ValueError, match="non-negative"):
        ev.mean_kl(-np.ones(2048))
    with pytest.raises(ValueError, match="same tokens"):
        ev.delta_ppl(np.zeros(2048), np.zeros(100))


def test_verdict_and_seeds_reject_bad_input():
    iv = ev.Interval(0.0, -1.0, 1.0, 0.95)
    with pytest.raises(ValueError, match="claim"):
        ev.verdict(iv, "better")
    with pytest.raises(ValueError, match="positive threshold"):
        ev.verdict(iv, "within")
    with pytest.raises(ValueError, match="Interval"):
        ev.verdict((-1.0, 1.0), "less")
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        ev.seed_interval([1.0], [2.0])
    with pytest.raises(ValueError, match="one value per seed"):
        ev.seed_interval([1.0, 2.0, 3.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        ev.paired_seeds(1)
    with pytest.raises(ValueError, match="level"):
        ev.seed_interval([1.0, 2.0], [2.0, 2.5], level=1.5)


def test_scoring_rejects_bad_streams(tiny, stream):
    m, _ = tiny
    with pytest.raises(ValueError, match="shorter than one window"):
        ev.token_nll(m, stream[:10], window=16)
    with pytest.raises(ValueError, match="stride"):
        ev.token_nll(m, stream, window=16, stride=16)
    with pytest.raises(ValueError, match="window"):
        ev.token_nll(m, stream, window=1)
    with pytest.raises(ValueError, match="1-D"):
        ev.token_nll(m, stream[:200].view(4, 50), window=16)
    with pytest.raises(ValueError, match="integer token ids"):
        ev.token_nll(m, stream.float(), window=16)
    with pytest.raises(ValueError, match="batch_size"):
        ev.token_nll(m, stream, window=16, batch_size=0)


# --------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_token_nll_agrees_with_perplexity_and_hf_loss_on_smollm2():
    from utils import corpora, model

    m, tok = model.load_smollm2()
    _, val = corpora.shakespeare_split()
    ids = torch.tensor(tok(val[:20_000])["input_ids"][: 4 * 256 + 7])
    nll = ev.token_nll(m, ids, window=256, batch_size=2)
    assert nll.numel() == 4 * 255
    assert math.log(model.perplexity(m, ids, window=256)) == pytest.approx(nll.mean().item(), abs=1e-5)
    with torch.inference_mode():
        hf = m(ids[None, :256], labels=ids[None, :256]).loss.item()
    assert hf == pytest.approx(nll[:255].mean().item(), abs=1e-5)
    # sliding windows give later tokens more context: lower NLL on the tokens both schemes score with context
    slide = ev.token_nll(m, ids, window=256, stride=128, batch_size=2)
    assert ev.scored_positions(ids.numel(), 256, 128).tolist() == list(range(1, slide.numel() + 1))
    assert slide.mean() < nll.mean()
    ref, other, kl = ev.compare_models(m, m, ids[:512], window=256)
    assert torch.equal(ref, other) and kl.abs().max() < 1e-5


def test_seed_mean_interval_is_the_one_sample_t_interval():
    a = [0.2, 0.5, 0.4]
    iv = ev.seed_mean_interval(a)
    lo, hi = stats.t.interval(0.95, df=2, loc=np.mean(a), scale=stats.sem(a))
    assert iv.estimate == pytest.approx(np.mean(a)) and iv.low == pytest.approx(lo) and iv.high == pytest.approx(hi)
    assert ev.seed_mean_interval([0.3, 0.3]) == ev.Interval(0.3, 0.3, 0.3, 0.95)
    with pytest.raises(ValueError, match="at least 2"):
        ev.seed_mean_interval([0.3])
    with pytest.raises(ValueError, match="1-D"):
        ev.seed_mean_interval([[0.3, 0.4]])
