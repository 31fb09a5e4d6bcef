"""utils.tinylm: byte tokens, batches, model shapes, pluggable blocks, a tiny run that learns, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils import tinylm


@pytest.fixture(scope="module")
def data():
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 60
    ids = tinylm.encode(text)
    return ids[:4000], ids[4000:]


def test_byte_tokens_round_trip():
    text = "Thou art — more lovely, é ✓"
    ids = tinylm.encode(text)
    assert ids.dtype == torch.uint8 and ids.numel() == len(text.encode("utf-8"))
    assert tinylm.decode(ids) == text
    with pytest.raises(ValueError, match="0..255"):
        tinylm.decode([300])


def test_get_batch_targets_are_shifted_inputs(data):
    x, y = tinylm.get_batch(data[0], 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="more than context"):
        tinylm.get_batch(data[0][:10], 2, 16)
    xa, _ = tinylm.eval_windows(data[1], 5, 16)
    xb, _ = tinylm.eval_windows(data[1], 5, 16)
    assert torch.equal(xa, xb) and xa.shape == (5, 16)


def test_shapes_and_pluggable_blocks():
    cfg = tinylm.TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context=16)
    model = tinylm.TinyLM(cfg, seed=0)
    logits, loss = model(torch.randint(0, 256, (3, 16)), torch.randint(0, 256, (3, 16)))
    assert logits.shape == (3, 16, 256) and loss.ndim == 0
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5   # near uniform at init
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 17, dtype=torch.long))

    class CountingFFN(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.lin = nn.Linear(cfg.d_model, cfg.d_model)

        def forward(self, x):
            self.aux_loss = x.pow(2).mean()
            return self.lin(x)

    plugged = tinylm.TinyLM(cfg, attention=tinylm.CausalSelfAttention, ffn=CountingFFN, seed=0)
    plugged(torch.zeros(1, 4, dtype=torch.long))
    assert plugged.aux_loss.item() > 0                       # summed from both layers' FFNs
    with pytest.raises(ValueError, match="divisible"):
        tinylm.TinyConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="multiple"):
        tinylm.TinyConfig(d_model=32, n_heads=4, n_kv_heads=3)


def test_attention_is_causal():
    cfg = tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=12)
    model = tinylm.TinyLM(cfg, seed=1)
    a = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 256
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    assert torch.allclose(la[0, :8], lb[0, :8], atol=1e-6)
    assert not torch.allclose(la[0, 8:], lb[0, 8:])


def test_training_lowers_the_loss_and_is_deterministic(data):
    cfg = tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=32)
    runs = []
    for _ in range(2):
        model = tinylm.TinyLM(cfg, seed=3)
        before = tinylm.evaluate(model, data[1], 32, n_windows=8)
        r = tinylm.train(model, data[0], data[1], steps=40, batch_size=8, lr=1e-2, seed=3, progress=False,
                         eval_windows=8)
        runs.append(r)
    assert runs[0].val_loss < before - 1.0
    assert runs[0].train_losses == runs[1].train_losses and runs[0].val_losses == runs[1].val_losses
    assert runs[0].val_steps[-1] == 40 and runs[0].tokens_seen == 40 * 8 * 32
    other = tinylm.train(tinylm.TinyLM(cfg, seed=4), data[0], data[1], steps=5, batch_size=8, seed=4, progress=False)
    assert other.train_losses[:5] != runs[0].train_losses[:5]


def test_generate_greedy_is_deterministic(data):
    cfg = tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=16)
    model = tinylm.TinyLM(cfg, seed=0)
    prompt = data[0][:20]
    out = tinylm.generate(model, prompt, 5)
    assert out.shape == (25,) and torch.equal(out[:20], prompt.long())
    assert torch.equal(out, tinylm.generate(model, prompt, 5))


class _FusedMoE(nn.Module):
    """A DeepSeek-style MoE FFN as notebook 03 writes it: fused routed experts (3-D tensors) + a shared SwiGLU."""

    def __init__(self, d, n_experts=8, k=2, d_expert=16):
        super().__init__()
        self.k = k
        self.router = nn.Parameter(torch.randn(n_experts, d))
        self.gate_up = nn.Parameter(torch.randn(n_experts, 2 * d_expert, d))
        self.down = nn.Parameter(torch.randn(n_experts, d, d_expert))
        self.shared = nn.ModuleDict({"gate": nn.Linear(d, d_expert, bias=False),
                                     "up": nn.Linear(d, d_expert, bias=False),
                                     "down": nn.Linear(d_expert, d, bias=False)})

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        s = (flat @ self.router.T).sigmoid()
        gates, idx = s.topk(self.k, dim=-1)
        y = torch.zeros_like(flat)
        for e in range(self.gate_up.shape[0]):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            g, u = (flat[tok] @ self.gate_up[e].T).chunk(2, dim=-1)
            y = y.index_add(0, tok, (torch.nn.functional.silu(g) * u) @ self.down[e].T * gates[tok, slot, None])
        sh = self.shared
        return (y + sh["down"](torch.nn.functional.silu(sh["gate"](flat)) * sh["up"](flat))).reshape(x.shape)


class _ListMoE(nn.Module):
    """Routed experts as separate SwiGLU modules, soft-weighted (every expert gets every token)."""

    def __init__(self, cfg):
        super().__init__()
        self.router = nn.Linear(cfg.d_model, 4, bias=False)
        self.experts = nn.ModuleList(tinylm.SwiGLU(cfg) for _ in range(4))

    def forward(self, x):
        w = self.router(x).softmax(-1)
        return sum(w[..., e:e + 1] * ex(x) for e, ex in enumerate(self.experts))


class _SequentialFFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.d_model, 64), nn.GELU(), nn.Linear(64, cfg.d_model))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("ffn,want_ffn", [
    (None, {"ffn.down.weight"}),
    (lambda c: _FusedMoE(c.d_model), {"ffn.down", "ffn.shared.down.weight"}),
    (_ListMoE, {f"ffn.experts.{e}.down.weight" for e in range(4)}),
    (_SequentialFFN, {"ffn.net.2.weight"}),
])
def test_every_residual_output_projection_gets_the_same_scaled_std(ffn, want_ffn):
    cfg = tinylm.TinyConfig(d_model=64, n_layers=4, n_heads=4, context=32)
    model = tinylm.TinyLM(cfg, ffn=ffn, seed=0)
    want = {f"blocks.{i}.{n}" for i in range(cfg.n_layers) for n in want_ffn | {"attn.o.weight"}}
    assert model.residual_out_names == want
    scaled = 0.02 / (2 * cfg.n_layers) ** 0.5
    for name, p in model.named_parameters():
        if p.dim() >= 2:   # attention out, dense down, shared and routed expert downs: all the scaled std
            target = scaled if name in want else 0.02
            assert abs(p.std().item() / target - 1) < 0.1, (name, p.std().item(), target)


def test_residual_output_detection_leaves_the_module_and_random_state_alone():
    cfg = tinylm.TinyConfig(d_model=32, n_layers=2, n_heads=2, context=16)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    model = tinylm.TinyLM(cfg, ffn=lambda c: _FusedMoE(c.d_model), seed=5)
    assert torch.equal(torch.rand(3), before)           # the global generator did not move
    again = tinylm.TinyLM(cfg, ffn=lambda c: _FusedMoE(c.d_model), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_lr_schedule_and_bad_input():
    at = tinylm.lr_schedule(1.0, steps=100, warmup=10)
    assert at(0) == pytest.approx(0.1) and at(9) == pytest.approx(1.0) and at(10) == pytest.approx(1.0)
    assert at(99) == pytest.approx(0.1, abs=1e-3) and at(55) < at(20)
    with pytest.raises(ValueError, match="warmup"):
        tinylm.lr_schedule(1.0, steps=10, warmup=-1)


def test_recipe_with_fused_adamw_trains(data):
    rec = tinylm.Recipe(d_model=32, n_layers=1, n_heads=2, context=32, batch_size=8, steps=30, lr=1e-2,
                        eval_windows=8)
    assert rec.config(n_kv_heads=1).n_kv_heads == 1 and rec.config().d_model == 32
    model, r = rec.run(data[0], data[1], seed=3, progress=False)
    assert r.val_losses[-1] < r.val_losses[0] and len(r.val_times) == len(r.val_steps)
    assert all(b >= a for a, b in zip(r.val_times, r.val_times[1:])) and r.val_times[-1] <= r.seconds
    _, again = rec.run(data[0], data[1], seed=3, progress=False)
    assert again.train_losses == r.train_losses                # fused AdamW is deterministic too


def test_train_accepts_an_optimizer_factory():
    """`optimizer(model, lr, weight_decay)` replaces make_optimizer; the schedule still sets its lr."""
    from utils import tinylm as tl

    seen = {}

    def factory(model, lr, weight_decay):
        seen["args"] = (lr, weight_decay)
        seen["opt"] = torch.optim.SGD(model.parameters(), lr=lr)
        return seen["opt"]

    data = (torch.arange(2000) % 256).to(torch.uint8)
    model = tl.TinyLM(tl.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=16), seed=0)
    tl.train(model, data, data, steps=3, batch_size=2, lr=0.05, weight_decay=0.2, warmup=0, progress=False,
             optimizer=factory)
    assert seen["args"] == (0.05, 0.2)
    assert seen["opt"].param_groups[0]["lr"] == pytest.approx(tl.lr_schedule(0.05, 3, 0)(2))
