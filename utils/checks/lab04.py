"""Hidden tests of lab 04 (faster decoding). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import torch

from ..checking import CheckFailed, expect_close, expect_tensor, run_check
from ..checking import seeded_randn as _rand


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: static KV-cache update in place, and the mask over the cache."""

    def tests():
        for H, L, D, T, pos in [(2, 8, 4, 1, 0), (3, 16, 8, 1, 7), (2, 12, 4, 3, 5), (1, 10, 2, 4, 6)]:
            cache = _rand(H, L, D, seed=L)
            before = cache.clone()
            new = _rand(H, T, D, seed=T + 100)
            mask = fn(cache, new, pos)
            what = f"update_cache(cache [{H}, {L}, {D}], new [{H}, {T}, {D}], pos={pos})"
            if torch.equal(cache, before):
                raise CheckFailed(f"{what}: the cache passed in is unchanged; update it in place (it is pre-allocated "
                                  "once), e.g. cache[:, pos:pos + T] = new")
            want = before.clone()
            want[:, pos:pos + T] = new
            if not torch.equal(cache, want):
                wrong = (cache != want).any(-1).any(0).nonzero().flatten().tolist()
                raise CheckFailed(f"{what}: cache positions {wrong} hold the wrong values (new tokens go to positions "
                                  f"{pos}..{pos + T - 1}; every other position stays as it was)")
            expect_tensor(f"{what}: mask", mask, shape=(T, L), dtype=torch.bool)
            want_mask = torch.arange(L)[None, :] <= (pos + torch.arange(T))[:, None]
            if not torch.equal(mask, want_mask):
                t = int((mask != want_mask).any(-1).nonzero()[0])
                raise CheckFailed(f"{what}: mask row {t} (the token at position {pos + t}) should allow positions "
                                  f"0..{pos + t}, got {mask[t].nonzero().flatten().tolist()}")
        return "new keys written at their positions in place; each token sees positions up to its own."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _ref_verify(draft: torch.Tensor, logits: torch.Tensor) -> list[int]:
    g = logits.argmax(-1)
    out = []
    for j, d in enumerate(draft.tolist()):
        if d != int(g[j]):
            return out + [int(g[j])]
        out.append(d)
    return out + [int(g[len(draft)])]


def check_2(fn) -> None:
    """Exercise 2: greedy verification returns the accepted prefix plus one target token."""

    def tests():
        V = 11
        cases = []
        for k, n_ok in [(1, 0), (1, 1), (3, 0), (3, 2), (4, 4), (6, 3)]:
            logits = _rand(k + 1, V, seed=10 * k + n_ok) * 3
            g = logits.argmax(-1)
            draft = g[:k].clone()
            if n_ok < k:
                draft[n_ok] = (draft[n_ok] + 1 + n_ok) % V
            cases.append((draft, logits, n_ok))
        for draft, logits, n_ok in cases:
            k = draft.numel()
            got = fn(draft, logits)
            want = _ref_verify(draft, logits)
            what = f"verify_greedy(k={k}, first {n_ok} drafts right)"
            if not isinstance(got, list) or not all(isinstance(x, int) for x in got):
                raise CheckFailed(f"{what}: return a list of Python ints, got {type(got).__name__}")
            if got == want[:-1]:
                raise CheckFailed(f"{what}: returned {got}, the accepted drafts only; append the target's own next "
                                  f"token (the correction, or the bonus token when all k matched): {want}")
            if got != want:
                raise CheckFailed(f"{what}: expected {want}, got {got} (draft j is checked against the target's "
                                  "choice after the first j drafts, i.e. row j of the logits)")
        return "accepted prefix + the target's next token, so every emitted token is the target's greedy choice."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
P = torch.tensor([[0.30, 0.05, 0.25, 0.10, 0.20, 0.10], [0.10, 0.20, 0.30, 0.10, 0.20, 0.10],
                  [0.05, 0.05, 0.50, 0.10, 0.10, 0.20]])
Q = torch.tensor([[0.10, 0.40, 0.10, 0.20, 0.10, 0.10], [0.30, 0.10, 0.10, 0.20, 0.10, 0.20]])
N_SAMPLES = 12_000


def emitted_frequencies(fn, n: int = N_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Frequencies of the first and (when two drafts were accepted) the bonus token; mean tokens per step."""
    g = torch.Generator().manual_seed(seed)
    first, bonus, total = torch.zeros(6), torch.zeros(6), 0
    for _ in range(n):
        draft = torch.stack([torch.multinomial(Q[j], 1, generator=g)[0] for j in range(2)])
        out = fn(P, Q, draft, g)
        if not isinstance(out, list) or not 1 <= len(out) <= 3:
            raise CheckFailed(f"speculative_accept must return a list of 1 to k+1 = 3 tokens, got {out!r}")
        first[int(out[0])] += 1
        if len(out) == 3:
            bonus[int(out[2])] += 1
        total += len(out)
    return first, bonus, total / n


def check_3(fn) -> None:
    """Exercise 3: the speculative-sampling accept/reject step keeps the target distribution (chi-square)."""
    from scipy.stats import chisquare

    def tests():
        g = torch.Generator().manual_seed(1)
        same = fn(P, P[:2], torch.tensor([0, 2]), g)
        if list(same[:2]) != [0, 2] or len(same) != 3:
            raise CheckFailed(f"with q == p every draft must be accepted and a bonus token drawn: expected [0, 2, x], "
                              f"got {same}")
        first, bonus, mean_len = emitted_frequencies(fn)
        pv = chisquare(first.numpy(), (P[0] * first.sum()).numpy()).pvalue
        freq = [round(float(x), 3) for x in first / first.sum()]
        if pv < 1e-4:
            raise CheckFailed(f"the first emitted token's frequencies {freq} are not the target's {P[0].tolist()} "
                              f"(chi-square p = {pv:.1e} over {N_SAMPLES} steps): keep x with probability "
                              "min(1, p(x)/q(x)) and resample rejections from norm(max(0, p - q))")
        if bonus.sum() > 100:
            pv_b = chisquare(bonus.numpy(), (P[2] * bonus.sum()).numpy()).pvalue
            if pv_b < 1e-4:
                raise CheckFailed(f"the bonus token (after 2 accepted drafts) should be drawn from p[k] = "
                                  f"{P[2].tolist()}; chi-square p = {pv_b:.1e}")
        return (f"first-token frequencies {freq} match the target {P[0].tolist()} (chi-square p = {pv:.2f}); "
                f"{mean_len:.2f} tokens per step.")

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def tiny_mtp(seed: int = 0):
    """A small MTP module on a random tiny Llama (sharp enough that a shifted target changes the loss a lot)."""
    from ..model import sharp_tiny_llama
    from ..mtp import MTPModule

    m = sharp_tiny_llama(vocab_size=53, hidden_size=32, num_hidden_layers=1, head_dim=8, std=0.5, seed=seed,
                         max_position_embeddings=64)
    mtp = MTPModule(m, init_block_from_last_layer=False)
    with torch.no_grad():
        mtp.proj.weight.normal_(std=0.3)
    return mtp


def check_4(fn) -> None:
    """Exercise 4: the MTP loss predicts token t+2 from (h_t, token t+1) with the shared head."""
    from ..mtp import mtp_loss

    def tests():
        mtp = tiny_mtp()
        for B, S, seed in [(2, 9, 0), (3, 16, 1), (1, 5, 2)]:
            hidden = _rand(B, S, 32, seed=seed) * 2
            tokens = torch.randint(0, 53, (B, S), generator=torch.Generator().manual_seed(seed))
            want = mtp_loss(mtp, hidden, tokens)
            got = fn(mtp, hidden, tokens)
            what = f"mtp_loss(hidden [{B}, {S}, 32], tokens [{B}, {S}])"
            if not torch.is_tensor(got) or got.numel() != 1:
                raise CheckFailed(f"{what}: return the mean cross-entropy as a one-element tensor, got {got!r}")
            if not got.requires_grad:
                raise CheckFailed(f"{what}: the loss must keep its graph (no .item(), no torch.no_grad) so it can be "
                                  "backpropagated into the module")
            expect_close(what, got.detach(), want.item(), rtol=1e-4)
        return "position i sees h_i and token i+1 and is scored on token i+2, through the shared head."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def check_5(fn) -> None:
    """Exercise 5: predicted speedup = E[tokens per verify step] / (cost of verifying k drafts / cost of one step)."""

    def tests():
        for alpha, k, cost in [(0.0, 4, 1.0), (0.5, 1, 1.0), (0.8, 4, 1.5), (0.9, 8, 2.0), (1.0, 3, 1.2),
                               (0.3, 2, 1.1)]:
            e = float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
            expect_close(f"predicted_speedup(alpha={alpha}, k={k}, verify_cost={cost})", fn(alpha, k, cost),
                         e / cost, rtol=1e-6)
        return "E[tokens] = (1 − α^(k+1)) / (1 − α) (the accepted drafts plus the bonus token), over the verify cost."

    run_check(5, tests)
