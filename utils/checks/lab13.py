"""Hidden tests of lab 13 (efficient training). Each `check_N(...)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback

import torch
from torch import nn

from .. import fp8train, tinylm
from ..checking import CheckFailed, expect_close, expect_keys, expect_value_error, run_check, seeded_randn
from ..ddp import free_port

STATE_KEYS = ("parameters", "gradients", "moments", "total")


def _tiny(seed: int = 0, **kw) -> tinylm.TinyLM:
    cfg = tinylm.TinyConfig(**{"d_model": 64, "n_layers": 2, "n_heads": 4, "context": 32, **kw})
    return tinylm.TinyLM(cfg, seed=seed)


def _batch(n: int = 8, context: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, context + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def saved_activation_bytes(model: nn.Module, *args) -> int:
    """Bytes autograd saves for backward in model(*args) (each storage once, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*args)
    return sum(seen.values())


# --------------------------------------------------------------------------- exercise 1
def _measured_states(dtype: torch.dtype) -> tuple[int, dict[str, int]]:
    """One AdamW step: the tiny LM in fp32; a small MLP in bf16 (AdamW's moments follow the parameters' dtype)."""
    if dtype == torch.float32:
        model = _tiny()
        x, y = _batch()
        loss = model(x, y)[1]
    else:
        model = nn.Sequential(nn.Linear(64, 200), nn.GELU(), nn.Linear(200, 64)).to(dtype)
        loss = model(seeded_randn(8, 64).to(dtype)).float().square().mean()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    got = {"parameters": size(model.parameters()), "gradients": size(p.grad for p in model.parameters()),
           "moments": size(v for s in opt.state.values() for k, v in s.items() if k != "step")}
    got["total"] = sum(got.values())
    return sum(p.numel() for p in model.parameters()), got


def check_1(state_bytes_formula) -> None:
    """Exercise 1: bytes of parameters, gradients and Adam moments from the parameter count, vs a measured step."""

    def tests():
        for dtype, kw in ((torch.float32, {}), (torch.bfloat16, {"param_bytes": 2, "grad_bytes": 2,
                                                                  "moment_bytes": 2})):
            n, want = _measured_states(dtype)
            got = state_bytes_formula(n, **kw)
            expect_keys("state_bytes_formula's result", got, STATE_KEYS)
            for k in STATE_KEYS:
                name = str(dtype).replace("torch.", "")
                expect_close(f"{k} of a {n:,}-parameter model in {name} with torch AdamW ({kw or 'defaults'})",
                             got[k], want[k], rtol=0)
        expect_value_error("a negative parameter count", lambda: state_bytes_formula(-1))
        return f"fp32 AdamW: {want['total'] * 2 // n} bytes per parameter, measured on a real optimizer step"

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(activation_bytes, tolerance: float = 0.02) -> None:
    """Exercise 2 (measure on your machine): predicted saved-activation bytes of TinyLM vs what autograd saves."""

    def tests():
        worst = 0.0
        for kw, (b, t) in (({}, (4, 32)), ({"d_model": 128, "n_layers": 3, "context": 64}, (2, 64)),
                           ({"n_heads": 2, "ffn_hidden": 96}, (8, 16))):
            model = _tiny(**kw)
            x, y = _batch(b, t)
            want = saved_activation_bytes(model, x, y)
            got = activation_bytes(model.cfg, b, t)
            err = abs(float(got) / want - 1)
            if not err <= tolerance:
                raise CheckFailed(f"for d={model.cfg.d_model}, {model.cfg.n_layers} layers, ffn "
                                  f"{model.cfg.ffn_hidden}, batch {b} x context {t}: predicted {float(got):,.0f} "
                                  f"bytes, autograd saved {want:,} ({100 * (float(got) / want - 1):+.1f}%; allowed "
                                  f"±{100 * tolerance:g}%)")
            worst = max(worst, err)
        return f"within {100 * worst:.2f}% of the saved tensors on three shapes"

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(accumulate_grads) -> None:
    """Exercise 3: gradient accumulation over micro-batches == the big batch's gradient."""

    def tests():
        x, y = _batch(12)
        ref = _tiny()
        _, loss = ref(x, y)
        loss.backward()
        want = _grads(ref)
        for accum in (1, 3, 4):
            model = _tiny()
            _, loss = model(x[:2], y[:2])
            loss.backward()                          # stale gradients: the loop must start from zero
            accumulate_grads(model, x, y, accum)
            got = _grads(model)
            rel = ((got - want).norm() / want.norm()).item()
            if rel > 1e-5:
                ratio = (got.norm() / want.norm()).item()
                hint = (f" (the gradient is {ratio:.2f}x the big batch's: divide each micro-batch's loss by accum)"
                        if abs(ratio - accum) < 0.05 * accum and accum > 1 else
                        " (only part of the batch reached the gradient? zero it once, before the loop)"
                        if ratio < 0.9 else " (stale gradients from before the call are still in .grad?)")
                raise CheckFailed(f"accum={accum}: relative difference from the big-batch gradient {rel:.2e}{hint}")
        expect_value_error("accum=5 with a batch of 12", lambda: accumulate_grads(_tiny(), x, y, 5))
        expect_value_error("accum=0", lambda: accumulate_grads(_tiny(), x, y, 0))
        return "the same gradient as the big batch for accum 1, 3, 4 (relative difference < 1e-5)"

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(CheckpointedBlock) -> None:
    """Exercise 4: a checkpointed block: same output and gradients, only its input saved for backward."""

    def tests():
        model = _tiny(d_model=64, n_layers=1)
        block = model.blocks[0]
        wrapped = CheckpointedBlock(block)
        if not isinstance(wrapped, nn.Module):
            raise CheckFailed("CheckpointedBlock(block) must be an nn.Module")
        if {id(p) for p in wrapped.parameters()} != {id(p) for p in block.parameters()}:
            raise CheckFailed("the wrapper must hold the block itself (the same parameters), not a copy")
        x = seeded_randn(4, 32, 64).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        ref = block(x2)
        ref.square().sum().backward()
        want = _grads(block).clone(), x2.grad.clone()
        block.zero_grad(set_to_none=True)
        out = wrapped(x)
        if not torch.is_tensor(out) or out.shape != ref.shape:
            raise CheckFailed(f"expected an output of shape {tuple(ref.shape)}, got {getattr(out, 'shape', out)}")
        if (out - ref).abs().max().item() > 1e-5:
            raise CheckFailed("the output differs from the block's own forward")
        out.square().sum().backward()
        if x.grad is None or all(p.grad is None for p in block.parameters()):
            raise CheckFailed("no gradient reached the input or the block's parameters (a detach, or no_grad "
                              "without recomputation?)")
        if (_grads(block) - want[0]).abs().max().item() > 1e-5 or (x.grad - want[1]).abs().max().item() > 1e-5:
            raise CheckFailed("the gradients differ from the plain block's")
        plain = saved_activation_bytes(block, x2)
        ckpt = saved_activation_bytes(wrapped, x)
        if ckpt > 0.25 * plain:
            raise CheckFailed(f"the wrapper saves {ckpt:,} bytes for backward, the plain block {plain:,}: it does "
                              "not checkpoint (use torch.utils.checkpoint.checkpoint(..., use_reentrant=False))")
        return f"saves {ckpt:,} bytes for backward instead of {plain:,}, same output and gradients"

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def check_5(fake_quant_tiles) -> None:
    """Exercise 5: e4m3 fake-quantization with one max-abs scale per 1 x tile tile."""

    def tests():
        from ..quant import fake_quantize_fp8

        x = seeded_randn(6, 256) * torch.logspace(-4, 2, 6)[:, None]
        x[2, 5] = 300.0                                        # an outlier in one tile only
        for tile in (128, 64):
            got = fake_quant_tiles(x, tile)
            want = fake_quantize_fp8(x, (1, tile), "e4m3")
            if not torch.is_tensor(got) or got.shape != x.shape:
                raise CheckFailed(f"expected a tensor of shape {tuple(x.shape)}, got {getattr(got, 'shape', got)}")
            err = ((got.float() - want) / want.abs().clamp(min=1e-30)).abs()
            bad = err > 1e-3
            if bad.any():
                r, c = (int(v) for v in bad.nonzero()[0])
                per_tensor = fake_quantize_fp8(x, (-1, -1), "e4m3")
                hint = (" (that is per-tensor scaling: one scale per 1 x tile tile)"
                        if torch.allclose(got.float(), per_tensor) else
                        " (scale = max-abs / 448, the e4m3 maximum, so each tile's max lands on 448)")
                raise CheckFailed(f"tile={tile}: element [{r}, {c}] is {got[r, c].item():.6g}, expected "
                                  f"{want[r, c].item():.6g}{hint}")
        z = torch.zeros(2, 128)
        if not torch.equal(fake_quant_tiles(z, 128).float(), z):
            raise CheckFailed("an all-zero tile must stay zero (guard the scale against 0)")
        expect_value_error("a width of 200 with tile 128", lambda: fake_quant_tiles(seeded_randn(2, 200), 128))
        return "matches utils.quant.fake_quantize_fp8 with (1, tile) blocks, zeros and bad widths handled"

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(Fp8LinearFn) -> None:
    """Exercise 6: a custom autograd Linear with e4m3 Fprop, Dgrad and Wgrad, against the course's reference."""

    def tests():
        x = seeded_randn(256, 256, seed=1) * torch.logspace(-3, 1, 256)[:, None]
        w = seeded_randn(384, 256, seed=2) * 0.05
        dy = seeded_randn(256, 384, seed=3) * torch.logspace(-4, 0, 256)[:, None]
        outs = {}
        for name, fn in (("yours", lambda a, b: Fp8LinearFn.apply(a, b)),
                         ("reference", lambda a, b: fp8train.Fp8LinearFunction.apply(a, b, "tile", 128)),
                         ("fp32", lambda a, b: a @ b.T)):
            xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = fn(xa, wa)
            y.backward(dy)
            outs[name] = (y.detach(), xa.grad, wa.grad)
        rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()
        for i, what in enumerate(("Fprop y", "Dgrad dx", "Wgrad dW")):
            got, ref, exact = outs["yours"][i], outs["reference"][i], outs["fp32"][i]
            if got is None:
                raise CheckFailed(f"{what}: no gradient returned")
            if got.shape != ref.shape:
                raise CheckFailed(f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
            e_ref, e_exact = rel(got, ref), rel(got, exact)
            if e_exact > 2**-4:
                raise CheckFailed(f"{what}: {e_exact:.3f} relative error against fp32, more than e4m3's rounding "
                                  f"(2^-4 = 0.0625): a scale or a transpose is wrong")
            if e_ref > 2e-3:
                hint = (" — it equals the exact fp32 product: this GEMM's operands were not quantized"
                        if e_exact < 1e-5 else " — check which dimension each operand's tiles run along (the "
                        "GEMM's contraction dimension: in_features for Fprop, out_features for Dgrad, tokens for "
                        "Wgrad) and that W uses 128 x 128 blocks")
                raise CheckFailed(f"{what}: {e_ref:.2e} relative difference from the reference recipe{hint}")
        errs = [rel(outs["yours"][i], outs["fp32"][i]) for i in range(3)]
        return (f"all three GEMMs match the reference recipe; error vs fp32: Fprop {errs[0]:.3f}, "
                f"Dgrad {errs[1]:.3f}, Wgrad {errs[2]:.3f}")

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def _rank(fn, rank: int, world: int, port: int, results) -> None:
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model = _tiny(seed=0)
        x, y = _batch(4, seed=10 + rank)                     # every rank its own data
        _, loss = model(x, y)
        loss.backward()
        local = _grads(model).clone()
        fn(model)
        # numpy arrays travel by value; a torch tensor would travel as a shared-memory handle that the parent can
        # only open while this process is alive (a child exiting first made the check fail at random)
        results.put((rank, local.numpy(), _grads(model).clone().numpy(), None))
        dist.destroy_process_group()
    except Exception:
        results.put((rank, None, None, traceback.format_exc(limit=3)))


def check_7(average_gradients, world: int = 2, timeout: float = 60.0) -> None:
    """Exercise 7: 2 processes (gloo), each with its own data; after your all-reduce every rank holds the mean."""

    def tests():
        if "fork" not in mp.get_all_start_methods():
            raise CheckFailed("this check forks 2 processes; this system cannot fork (run the lab on Linux/macOS)")
        ctx = mp.get_context("fork")
        results = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=_rank, args=(average_gradients, r, world, port, results), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        got = {}
        try:
            for _ in range(world):
                rank, local, after, err = results.get(timeout=timeout)
                if err:
                    raise CheckFailed(f"rank {rank} raised: {err.strip().splitlines()[-1]}")
                got[rank] = (torch.from_numpy(local), torch.from_numpy(after))
        except queue.Empty:
            raise CheckFailed(f"the ranks did not finish in {timeout:.0f} s (does every rank call all_reduce the "
                              "same number of times, in the same order?)") from None
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
        mean = sum(got[r][0] for r in range(world)) / world
        for r in range(world):
            after = got[r][1]
            if torch.allclose(after, sum(got[q][0] for q in range(world)), atol=1e-6):
                raise CheckFailed(f"rank {r} holds the *sum* of the gradients: divide by the world size")
            if torch.allclose(after, got[r][0], atol=1e-7):
                raise CheckFailed(f"rank {r}'s gradients did not change: nothing was all-reduced")
            if not torch.allclose(after, mean, rtol=1e-5, atol=1e-7):
                raise CheckFailed(f"rank {r}: max |gradient - mean over ranks| = {(after - mean).abs().max():.3g}")
        return f"{world} gloo processes: every rank holds the mean of their gradients"

    run_check(7, tests)
