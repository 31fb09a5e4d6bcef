"""Data-parallel training of the course's tiny LM with torch.distributed: a worker script and a clean launcher.

Worker (what every rank runs; the same file runs on a cluster):

    torchrun --nproc-per-node 2 -m utils.ddp --out result.json              # one machine, 2 processes
    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m utils.ddp --backend nccl

Each rank builds the same model (same seed), takes its slice of a global batch (rank r of W reads rows
r·B/W .. (r+1)·B/W, the rank sharding of notebook 12), and DDP averages the gradients with an all-reduce during
backward. Rank 0 checks them against the single-process gradient of the whole global batch, times training steps
with and without the gradient all-reduce (`no_sync`), times a bare all-reduce of all gradients, and tries FSDP2's
`fully_shard`; it writes everything to `--out` as JSON.

Launcher (`launch`): picks a free port, limits threads per process, runs `python -m torch.distributed.run` in its
own process group and kills that whole group on a timeout or an error, so no worker outlives the call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .results import REPO_ROOT


# --------------------------------------------------------------------------- launcher
def free_port() -> int:
    """A TCP port that is free on this machine now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something listens on `port` of localhost (a rendezvous there would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def torchrun_available() -> bool:
    """Whether torch.distributed (and its launcher, torch.distributed.run) is usable in this torch build."""
    import importlib.util

    return torch.distributed.is_available() and importlib.util.find_spec("torch.distributed.run") is not None


@dataclass
class LaunchResult:
    """What a launch produced: the return code, the combined output, seconds from start to exit, the JSON result."""

    returncode: int
    output: str
    seconds: float
    result: dict | None


def launch(args: list[str], nproc: int = 2, threads: int = 1, port: int | None = None, timeout: float = 120.0,
           out: str | Path | None = None, module: str = "utils.ddp") -> LaunchResult:
    """Run `torchrun --nproc-per-node nproc -m module args` with `threads` threads per process; return its result.

    A `port` already in use is refused (ValueError); None picks a free one. More processes x threads than usable
    cores is warned about and the threads are limited to what fits (at least 1). The launcher runs in its own
    process group, killed as a whole on timeout, so no rank survives the call.
    """
    from .timing import usable_cores

    if not torchrun_available():
        raise RuntimeError("torch.distributed / torchrun is not available in this torch build: install a torch "
                           "wheel with distributed support (the default Linux/macOS wheels have it)")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    cores = usable_cores()
    if nproc * threads > cores:
        fit = max(1, cores // nproc)
        warnings.warn(f"{nproc} processes x {threads} threads > {cores} usable cores: limiting each process to "
                      f"{fit} thread(s){' (still oversubscribed)' if nproc > cores else ''}", stacklevel=2)
        threads = fit
    if port is None:
        port = free_port()
    elif port_in_use(port):
        raise ValueError(f"port {port} is in use on this machine: pass another, or port=None to pick a free one")
    out = Path(out) if out is not None else None
    if out is not None and out.exists():
        out.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", module, *args,
           *(["--out", str(out)] if out is not None else []), "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=REPO_ROOT)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise RuntimeError(f"torchrun did not finish in {timeout:.0f} s; killed its process group. Output:\n"
                           f"{output[-2000:]}") from None
    finally:
        try:                                  # whatever is left in the group (a rank that hung): gone
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    seconds = time.perf_counter() - t0
    result = json.loads(out.read_text()) if out is not None and out.exists() and proc.returncode == 0 else None
    return LaunchResult(proc.returncode, output, seconds, result)


# --------------------------------------------------------------------------- worker
def global_batch(seed: int, batch: int, context: int, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global batch on every rank: windows of `data` drawn from a generator seeded by `seed`."""
    from .tinylm import get_batch

    return get_batch(data, batch, context, torch.Generator().manual_seed(seed))


def rank_slice(batch: int, rank: int, world: int) -> slice:
    """Rows of the global batch that `rank` of `world` computes on (contiguous, equal shares)."""
    if batch % world:
        raise ValueError(f"global batch {batch} does not split over {world} ranks: pick a multiple of {world}")
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


def _model(args):
    from .tinylm import TinyConfig, TinyLM

    cfg = TinyConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=4, context=args.context)
    return TinyLM(cfg, seed=args.seed)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _best(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def worker(argv: list[str] | None = None) -> None:
    """One rank of the data-parallel run (launched by torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .tinylm import make_optimizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="gloo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="global batch (windows), split over the ranks")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fsdp", action="store_true", help="also try FSDP2 fully_shard")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    from .tinylm import encode

    data = encode("".join(chr(32 + (i * 7919) % 95) for i in range(50_000)))   # any fixed stream: no asset needed
    try:
        from .corpora import shakespeare_split
        data = encode(shakespeare_split("modern", 0.1)[0][:2_000_000])
    except Exception:                       # assets missing: the synthetic stream is enough for gradients/timing
        pass
    x, y = global_batch(args.seed, args.batch, args.context, data)
    mine = rank_slice(args.batch, rank, world)
    res: dict = {"world_size": world, "backend": args.backend, "threads": torch.get_num_threads(),
                 "global_batch": args.batch, "context": args.context}

    # 1. gradients: DDP on each rank's slice == one process on the whole global batch
    model = _model(args)
    ddp_model = DDP(model)
    _, loss = ddp_model(x[mine], y[mine])
    loss.backward()
    g_ddp = _grads(model)
    if rank == 0:
        ref = _model(args)
        _, loss_ref = ref(x, y)
        loss_ref.backward()
        g_ref = _grads(ref)
        res["grad_max_abs_diff"] = float((g_ddp - g_ref).abs().max())
        res["grad_max_abs"] = float(g_ref.abs().max())
        res["grad_rel_diff"] = float((g_ddp - g_ref).norm() / g_ref.norm())
        res["n_params"] = int(g_ref.numel())

    # 2. step times with and without the gradient all-reduce
    opt = make_optimizer(model, 1e-3)

    def step(sync: bool):
        opt.zero_grad(set_to_none=True)
        if sync:
            _, loss = ddp_model(x[mine], y[mine])
            loss.backward()
        else:
            with ddp_model.no_sync():
                _, loss = ddp_model(x[mine], y[mine])
                loss.backward()
        opt.step()

    for _ in range(2):
        step(True)
        step(False)
    t_sync, t_local = [], []
    for i in range(args.steps):                 # interleaved, so both modes see the same machine
        for sync in ((True, False) if i % 2 == 0 else (False, True)):
            dist.barrier()
            t0 = time.perf_counter()
            step(sync)
            dist.barrier()
            (t_sync if sync else t_local).append(time.perf_counter() - t0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    dist.barrier()
    t_ar = _best(lambda: (dist.all_reduce(flat), dist.barrier()), args.steps)
    res.update(step_s_ddp=t_sync, step_s_no_sync=t_local, allreduce_s=t_ar,
               allreduce_bytes=flat.numel() * flat.element_size(),
               tokens_per_step=args.batch * args.context)

    # 3. FSDP2 on this backend: does it run, and what does each rank hold?
    if args.fsdp:
        try:
            from torch.distributed.fsdp import fully_shard

            fmodel = _model(args)
            full_bytes = sum(p.numel() * p.element_size() for p in fmodel.parameters())
            for block in fmodel.blocks:
                fully_shard(block)
            fully_shard(fmodel)
            local = sum(p.to_local().numel() * p.element_size() for p in fmodel.parameters())
            fopt = make_optimizer(fmodel, 1e-3)
            _, floss = fmodel(x[mine], y[mine])
            floss.backward()
            fopt.step()
            states = sum(v.to_local().numel() * v.element_size() for s in fopt.state.values()
                         for v in s.values() if hasattr(v, "to_local"))
            g_fsdp = torch.cat([p.grad.full_tensor().flatten() for p in fmodel.parameters()])
            res["fsdp"] = {"ok": True, "param_bytes_full": full_bytes, "param_bytes_local": local,
                           "adam_state_bytes_local": states,
                           "grad_max_abs_diff_vs_single": float((g_fsdp - g_ref).abs().max()) if rank == 0 else None}
        except Exception as e:                 # reported, not hidden: the notebook prints it
            res["fsdp"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: res[k] for k in ("step_s_ddp", "step_s_no_sync")})
    if rank == 0:
        res["per_rank"] = gathered
        if args.out:
            Path(args.out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker()
