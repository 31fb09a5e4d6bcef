"""Add-k n-gram baselines: exact against a brute-force count, k chosen on held-out train, bad input refused."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from utils import ngram

TRAIN = b"the cat sat on the mat. the cat ate the rat. a rat sat on a cat."
VAL = b"the rat sat on the cat. the mat ate a rat."


def brute_force_nll(train: bytes, val: bytes, order: int, k: float, vocab: int, start: int) -> list[float]:
    """-log P(x | previous order-1 bytes), add-k, from Python Counters over tuples."""
    grams = Counter(tuple(train[i:i + order]) for i in range(len(train) - order + 1))
    ctxs = Counter(tuple(train[i:i + order - 1]) for i in range(len(train) - order + 1))
    out = []
    for i in range(start, len(val)):
        g = tuple(val[i - order + 1:i + 1])
        p = (grams[g] + k) / (ctxs[g[:-1]] + k * vocab)
        out.append(-math.log(p))
    return out


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [0.01, 0.5, 1.0])
def test_matches_a_brute_force_count_exactly(order, k):
    tr, va = np.frombuffer(TRAIN, dtype=np.uint8), np.frombuffer(VAL, dtype=np.uint8)
    model = ngram.fit(tr, order, vocab_size=256, k=k)
    got = model.token_nll(va, start=3)
    np.testing.assert_allclose(got, brute_force_nll(TRAIN, VAL, order, k, 256, start=3), rtol=1e-12)
    # the probabilities over the vocabulary sum to one for a seen and for an unseen context
    for ctx in (TRAIN[:order - 1], b"zq!"[:order - 1]):
        seqs = np.array([list(ctx) + [x] for x in range(256)], dtype=np.int64)
        p = [math.exp(-model.token_nll(s, start=order - 1)[0]) for s in seqs]
        assert sum(p) == pytest.approx(1.0, abs=1e-12)


def test_token_streams_and_torch_input_work_too():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, 5000)
    a = ngram.fit(torch.from_numpy(ids), 2, vocab_size=1000, k=0.1).token_nll(torch.from_numpy(ids[:300]))
    b = ngram.fit(ids, 2, vocab_size=1000, k=0.1).token_nll(ids[:300])
    np.testing.assert_array_equal(a, b)
    r = ngram.evaluate(ids[:4000], ids[4000:], 1, vocab_size=1000, bytes_per_token=3.0)
    assert r.nats_per_token == pytest.approx(math.log(1000), abs=0.05)        # iid uniform tokens
    assert r.bits_per_byte == pytest.approx(r.nats_per_token / math.log(2) / 3.0)
    assert ngram.evaluate(ids[:4000], ids[4000:], 1, vocab_size=1000).bits_per_byte is None


def test_k_is_the_held_out_argmin_and_bits_per_byte_for_bytes():
    rng = np.random.default_rng(1)
    text = np.frombuffer((TRAIN + VAL) * 40, dtype=np.uint8).copy()
    text[rng.integers(0, text.size, 300)] = rng.integers(0, 256, 300)   # some noise so k matters
    k = ngram.tune_k(text, 3, 256)
    cut = int(text.size * 0.9)
    losses = {kk: np.mean(brute_force_nll(bytes(text[:cut]), bytes(text[cut:]), 3, kk, 256, start=2))
              for kk in ngram.K_GRID}
    assert k == min(losses, key=losses.get)
    r = ngram.evaluate(text, text[:500], 3)
    assert r.k == k and r.bits_per_byte == pytest.approx(r.nats_per_token / math.log(2))


def test_baselines_score_every_order_on_the_same_tokens_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = np.frombuffer((TRAIN + VAL) * 30, dtype=np.uint8)
    res = ngram.baselines(text[:2500], text[2500:], orders=(1, 2, 3, 4))
    assert list(res) == ["unigram", "bigram", "trigram", "4-gram"]
    assert len({r.n_scored for r in res.values()}) == 1
    nats = [r.nats_per_token for r in res.values()]
    assert nats == sorted(nats, reverse=True)   # repetitive text: more context, lower loss
    fig, ax = plt.subplots()
    ngram.plot_baselines(ax, res)
    assert len(ax.lines) == 4 and ax.texts[0].get_text() == f"unigram {nats[0]:.2f}"
    ngram.plot_baselines(ax, {"trigram": 1.97})
    plt.close(fig)


@pytest.mark.parametrize("call, match", [
    (lambda: ngram.fit(np.arange(10), 0, k=1.0), "order"),
    (lambda: ngram.fit(np.arange(10), 9, k=1.0), "order"),
    (lambda: ngram.fit(np.arange(10), 2, k=0.0), "k must be"),
    (lambda: ngram.fit(np.arange(10), 2, k=float("nan")), "k must be"),
    (lambda: ngram.fit(np.zeros((2, 5), dtype=int), 2, k=1.0), "1-D"),
    (lambda: ngram.fit(np.linspace(0, 1, 10), 2, k=1.0), "integer"),
    (lambda: ngram.fit(np.array([1, -1, 2]), 1, k=1.0), "negative"),
    (lambda: ngram.fit(np.arange(300), 2, vocab_size=256, k=1.0), "outside the vocabulary"),
    (lambda: ngram.fit(np.arange(3), 4, k=1.0), "needs more"),
    (lambda: ngram.fit(np.arange(100), 5, vocab_size=2**16, k=1.0), "64-bit"),
    (lambda: ngram.fit(np.arange(10), 2, vocab_size=256, k=1.0).token_nll(np.array([1, 300])), "outside"),
    (lambda: ngram.fit(np.arange(10), 3, vocab_size=256, k=1.0).token_nll(np.arange(5), start=1), "start"),
    (lambda: ngram.fit(np.arange(10), 3, vocab_size=256, k=1.0).token_nll(np.arange(2)), "too short"),
    (lambda: ngram.evaluate(np.arange(100), np.arange(10), 1, vocab_size=300, bytes_per_token=0), "bytes_per_token"),
    (lambda: ngram.baselines(np.arange(100), np.arange(10), orders=()), "at least one"),
    (lambda: ngram.tune_k(np.arange(12), 4, 256), "too short"),
    (lambda: ngram.plot_baselines(None, {}, unit="bits"), "unit"),
])
def test_bad_input_is_refused_with_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_shakespeare_byte_baselines_match_the_calibration():
    from utils.tinylm import shakespeare_bytes

    train, val = shakespeare_bytes()
    res = ngram.baselines(train, val, orders=(1, 2, 3, 4))
    nats = [r.nats_per_token for r in res.values()]
    # issue 11 reports add-k byte n-grams at about 3.34 / 2.50 / 1.98 / 1.65 nats/byte on this split
    np.testing.assert_allclose(nats, [3.34, 2.50, 1.98, 1.65], atol=0.05)
