"""The course's decoder: static-cache greedy == transformers' eager greedy, speculative == greedy, the sampling rule
preserves the target distribution, and bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from utils import decoder
from utils.decoder import PromptLookupDraft, StaticCacheDecoder, accept_reject, expected_tokens_per_step
from utils.model import sharp_tiny_llama


def _tiny_llama(seed: int = 0, vocab: int = 97):
    # sharp logits: a wrong mask or RoPE changes the argmax
    return sharp_tiny_llama(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, head_dim=16, std=0.3, seed=seed,
                            max_position_embeddings=256, rope_theta=10000.0)


def _hf_greedy(m, ids: torch.Tensor, n: int, eos=None) -> list[int]:
    with torch.inference_mode():
        out = m.generate(ids[None], attention_mask=torch.ones_like(ids[None]), max_new_tokens=n, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)
    return out[0, ids.numel():].tolist()


PROMPTS = [torch.tensor(p) for p in ([5, 17, 3, 9, 22, 5, 17, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3],
                                      [60, 61], [42] * 6)]


@pytest.fixture(scope="module")
def tiny():
    return _tiny_llama()


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_static_cache_greedy_equals_transformers(tiny, i):
    want = _hf_greedy(tiny, PROMPTS[i], 24)
    dec = StaticCacheDecoder(tiny, max_len=48)
    got = dec.generate(PROMPTS[i], 24)
    assert got.tokens == want
    assert got.steps == 23 and got.tokens_per_step == 1


def test_decoder_is_reusable_and_stops_at_eos(tiny):
    dec = StaticCacheDecoder(tiny, max_len=48)
    first = dec.generate(PROMPTS[1], 20).tokens
    dec.generate(PROMPTS[0], 20)                       # a different prompt leaves stale cache entries behind
    assert dec.generate(PROMPTS[1], 20).tokens == first
    eos = first[5]
    stopped = dec.generate(PROMPTS[1], 20, eos_token_id=eos).tokens
    assert stopped == first[: first.index(eos) + 1] == _hf_greedy(tiny, PROMPTS[1], 20, eos=eos)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_greedy_equals_greedy(tiny, k):
    dec = StaticCacheDecoder(tiny, max_len=64)
    for p in PROMPTS:
        want = dec.generate(p, 30).tokens
        got = dec.speculative_generate(p, 30, PromptLookupDraft(97), k=k)
        assert got.tokens == want
        assert got.accepted <= got.drafted <= k * got.steps
        assert got.steps == len(got.accepted_per_step) and sum(got.accepted_per_step) == got.accepted


class _OracleDraft:
    """Proposes the true greedy continuation, with every `wrong_every`-th token corrupted."""

    def __init__(self, vocab_size, truth, prompt_len, wrong_every=0):
        self.vocab_size, self.truth, self.n, self.wrong_every = vocab_size, truth, prompt_len, wrong_every

    def propose(self, tokens, hidden, k):
        done = tokens.numel() - self.n
        prop = torch.tensor(self.truth[done: done + k], dtype=torch.long)
        if self.wrong_every:
            for j in range(prop.numel()):
                if (done + j) % self.wrong_every == 0:
                    prop[j] = (prop[j] + 1) % self.vocab_size
        return prop


def test_speculative_counts_accepted_prefix_and_bonus(tiny):
    dec = StaticCacheDecoder(tiny, max_len=64)
    p = PROMPTS[0]
    truth = dec.generate(p, 25).tokens
    perfect = dec.speculative_generate(p, 25, _OracleDraft(97, truth, p.numel()), k=4)
    assert perfect.tokens == truth
    assert perfect.acceptance_rate == 1 and perfect.steps == 5       # 24 tokens after the first, 5 per step (k + 1)
    noisy = dec.speculative_generate(p, 25, _OracleDraft(97, truth, p.numel(), wrong_every=3), k=4)
    assert noisy.tokens == truth and 0 < noisy.acceptance_rate < 1
    assert perfect.acceptance_by_position(4) == [(5, 5)] * 4
    by_pos = noisy.acceptance_by_position(4)
    assert sum(a for a, _ in by_pos) == noisy.accepted and by_pos[0][1] == noisy.steps
    assert all(by_pos[j + 1][1] <= by_pos[j][0] for j in range(3))     # position j+1 is tried only after j was kept
    assert noisy.draft_s > 0 and len(noisy.drafted_per_step) == noisy.steps


def test_compiled_step_or_clear_fallback(tiny, monkeypatch):
    def broken(*args, **kwargs):
        def fn(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="uncompiled"):
        dec = StaticCacheDecoder(tiny, max_len=48, compile=True)
    assert not dec.compiled and dec.compile_s is None
    assert dec.generate(PROMPTS[0], 12).tokens == _hf_greedy(tiny, PROMPTS[0], 12)


@pytest.mark.slow
def test_compiled_step_equals_transformers(tiny):
    dec = StaticCacheDecoder(tiny, max_len=48, compile=True)
    assert dec.compiled and dec.compile_s > 0
    for p in PROMPTS[:2]:
        assert dec.generate(p, 16).tokens == _hf_greedy(tiny, p, 16)


def test_bad_input_is_rejected_clearly(tiny):
    dec = StaticCacheDecoder(tiny, max_len=16)
    with pytest.raises(ValueError, match="exceed the static cache"):
        dec.generate(torch.arange(10), 7)
    with pytest.raises(ValueError, match="k .* must be an integer >= 1"):
        dec.speculative_generate(PROMPTS[0], 4, PromptLookupDraft(97), k=0)
    with pytest.raises(ValueError, match="vocabulary"):
        dec.speculative_generate(PROMPTS[0], 4, PromptLookupDraft(100), k=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(PROMPTS[0], 0)
    with pytest.raises(ValueError, match="max_len"):
        StaticCacheDecoder(tiny, max_len=1)
    with pytest.raises(ValueError, match="Llama"):
        StaticCacheDecoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="k must be"):
        expected_tokens_per_step(0.5, 0)


def test_prompt_lookup_proposes_the_continuation_of_the_last_ngram():
    d = PromptLookupDraft(50, max_ngram=3)
    t = torch.tensor([7, 8, 9, 1, 2, 3, 4, 7, 8, 9])
    assert d.propose(t, None, 3).tolist() == [1, 2, 3]
    t = torch.tensor([1, 2, 5, 6, 1, 2, 7, 8, 1, 2])          # the most recent earlier "1 2" wins
    assert d.propose(t, None, 2).tolist() == [7, 8]
    assert d.propose(torch.tensor([1, 2, 3]), None, 4).numel() == 0


def test_expected_tokens_formula():
    assert expected_tokens_per_step(0.0, 4) == 1
    assert expected_tokens_per_step(1.0, 4) == 5
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


# --------------------------------------------------------------------------- speculative sampling
V = 6
P = torch.tensor([[0.30, 0.05, 0.25, 0.10, 0.20, 0.10], [0.1, 0.2, 0.3, 0.1, 0.2, 0.1],
                  [0.05, 0.05, 0.5, 0.1, 0.1, 0.2]])
Q = torch.tensor([[0.10, 0.40, 0.10, 0.20, 0.10, 0.10], [0.3, 0.1, 0.1, 0.2, 0.1, 0.2]])


def _first_tokens(rule, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V)
    for _ in range(n):
        draft = torch.stack([torch.multinomial(Q[j], 1, generator=g)[0] for j in range(2)])
        counts[rule(P, Q, draft, g)[0]] += 1
    return counts


def test_accept_reject_preserves_the_target_distribution():
    counts = _first_tokens(accept_reject)
    res = chisquare(counts.numpy(), (P[0] * counts.sum()).numpy())
    assert res.pvalue > 1e-3, (counts / counts.sum(), P[0])


def test_chi_square_rejects_the_inverted_rule():
    def inverted(p, q, draft, g):                       # accepts with min(1, q/p): the classic slip
        x = int(draft[0])
        if torch.rand((), generator=g) * p[0, x] < q[0, x]:
            return [x]
        resid = (p[0] - q[0]).clamp(min=0)
        return [int(torch.multinomial(resid / resid.sum(), 1, generator=g))]

    counts = _first_tokens(inverted)
    assert chisquare(counts.numpy(), (P[0] * counts.sum()).numpy()).pvalue < 1e-6


def test_accept_reject_bonus_token_and_shapes():
    g = torch.Generator().manual_seed(1)
    same = accept_reject(P[:3], P[:2], torch.tensor([0, 2]), g)   # q == p: always accepted, plus a bonus token
    assert len(same) == 3 and same[:2] == [0, 2]
    with pytest.raises(ValueError, match="shapes"):
        accept_reject(P[:2], Q, torch.tensor([0, 2]))


# --------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_smollm2_static_compiled_and_speculative_equal_generate():
    from utils.model import chat_ids, load_smollm2

    model, tok = load_smollm2()
    prompts = ["What is the capital of France?", "Repeat exactly: the quick brown fox jumps over the lazy dog.",
               "Write a haiku about the sea."]
    dec = StaticCacheDecoder(model, max_len=128, compile=True)
    for text in prompts:
        ids = chat_ids(tok, text)[0]
        want = _hf_greedy(model, ids, 24, eos=tok.eos_token_id)
        assert dec.generate(ids, 24, eos_token_id=tok.eos_token_id).tokens == want
        spec = dec.speculative_generate(ids, 24, PromptLookupDraft(dec.vocab_size), k=4, eos_token_id=tok.eos_token_id)
        assert spec.tokens == want


def test_module_api_is_small():
    public = sorted(n for n in dir(decoder) if not n.startswith("_")
                    and getattr(getattr(decoder, n), "__module__", None) == decoder.__name__)
    assert public == ["Draft", "GenerateResult", "PromptLookupDraft", "StaticCacheDecoder", "accept_reject",
                      "decoder_block", "expected_tokens_per_step"]


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_attend_filled_equals_transformers_and_speculates(tiny, i):
    # attention over only the written positions: same greedy tokens, also through multi-token verify steps
    want = _hf_greedy(tiny, PROMPTS[i], 24)
    dec = StaticCacheDecoder(tiny, max_len=48, attend="filled")
    assert dec.generate(PROMPTS[i], 24).tokens == want
    assert dec.speculative_generate(PROMPTS[i], 24, PromptLookupDraft(dec.vocab_size), k=3).tokens == want


def test_attend_option_is_checked(tiny):
    with pytest.raises(ValueError, match="attend must be"):
        StaticCacheDecoder(tiny, max_len=48, attend="window")
    with pytest.raises(ValueError, match="cannot be compiled"):
        StaticCacheDecoder(tiny, max_len=48, attend="filled", compile=True)
