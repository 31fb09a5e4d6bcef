"""Measuring cost: timing done right, peak memory, parameter/byte/FLOP counts, this machine's roofline."""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch


# --------------------------------------------------------------------------- devices and seeds
def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda if present, else mps, else cpu. An explicit device that is absent is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but this torch sees no CUDA GPU; use 'auto' or 'cpu'.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'.")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    return device


def seed_everything(seed: int = 0) -> None:
    """Seed python, torch (and numpy if present) for reproducible notebooks."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work so a timer measures it (no-op on the CPU)."""
    dev = str(device or "")
    if dev.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    elif dev == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock seconds of repeated calls: the median is the number to quote, the spread says how much to trust it."""

    times: list[float] = field(repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def iqr(self) -> float:
        """Interquartile range (75th - 25th percentile)."""
        if len(self.times) < 4:
            return self.max - self.min
        q = statistics.quantiles(self.times, n=4)
        return q[2] - q[0]

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median if self.median > 0 else float("nan")

    def __str__(self) -> str:
        return f"{_fmt_s(self.median)} median (IQR {_fmt_s(self.iqr)}, min {_fmt_s(self.min)}, n={len(self.times)})"


def _fmt_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def benchmark(fn: Callable[[], object], warmup: int = 2, repeats: int = 10, min_time: float = 0.0,
              device: str | None = None) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then `repeats` timed calls (more until `min_time` s have passed)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10_000:
            break
    return Timing(times)


# --------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident memory of this process now."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started (the OS's high-water mark)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024 if platform.system() != "Darwin" else kb


class PeakMemory:
    """Context manager: peak resident memory of this process during the block (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def increase(self) -> int:
        """Peak minus the resident memory at the start of the block, in bytes."""
        return self.peak - self.start


# --------------------------------------------------------------------------- counting
def count_params(module: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def param_bytes(module: torch.nn.Module) -> int:
    """Bytes of distinct parameters and buffers as stored (numel x element size)."""
    seen, n = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            n += t.numel() * t.element_size()
    return n


def params_by_component(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of a Llama-style causal LM grouped as embedding / attention / mlp / norms / lm_head (untied only)."""
    groups = {"embedding": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head (untied)": 0, "other": 0}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        if "embed_tokens" in name:
            key = "embedding"
        elif "self_attn" in name:
            key = "attention"
        elif ".mlp." in name:
            key = "mlp"
        elif "norm" in name:
            key = "norms"
        elif "lm_head" in name:
            key = "lm_head (untied)"
        else:
            key = "other"
        groups[key] += p.numel()
    return {k: v for k, v in groups.items() if v or k in ("embedding", "attention", "mlp", "norms")}


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of `fn` as counted by torch.utils.flop_counter (matmuls and convolutions only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(k).split(".")[-1] if not hasattr(k, "__name__") else k.__name__: int(v)
             for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


# --------------------------------------------------------------------------- this machine's roofline
def gemm_flops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 5, device: str = "cpu") -> float:
    """Measured FLOP/s of an n x n x n matrix multiply (2 n^3 FLOPs per call), median of `repeats`."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = benchmark(lambda: a @ b, warmup=1, repeats=repeats, device=device)
    return 2 * n**3 / t.median


def memory_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, device: str = "cpu") -> float:
    """Measured read bandwidth (bytes/s) of summing a float32 buffer of `nbytes` (median of `repeats`)."""
    if nbytes < 4096:
        raise ValueError(f"nbytes must be at least 4096, got {nbytes}")
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    inner = max(1, int(4 * 2**20 // nbytes))  # repeat tiny buffers inside one timed call
    def run():
        for _ in range(inner):
            x.sum()
    t = benchmark(run, warmup=2, repeats=repeats, device=device)
    return inner * x.numel() * 4 / t.median


def cache_sizes() -> dict[str, int]:
    """CPU cache sizes in bytes as the OS reports them (L1d, L2, L3 per instance), where available."""
    out: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if base.is_dir():
        for idx in sorted(base.glob("index*")):
            try:
                level = (idx / "level").read_text().strip()
                kind = (idx / "type").read_text().strip()
                size = (idx / "size").read_text().strip()
            except OSError:
                continue
            if kind == "Instruction":
                continue
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
            num = int(size[:-1]) if size[-1] in "KMG" else int(size)
            out[f"L{level}" + ("d" if kind == "Data" else "")] = num * mult
    return out


# --------------------------------------------------------------------------- fingerprint
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """CPU feature flags (Linux), e.g. avx512f, avx512_bf16, amx_tile."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass
class Fingerprint:
    """What this machine is: enough to compare numbers across learners."""

    cpu: str
    logical_cores: int
    physical_cores: int | None
    torch_threads: int
    ram_gb: float
    caches: dict[str, int]
    simd: list[str]
    python: str
    torch: str
    device: str
    os: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        caches = ", ".join(f"{k} {v / 2**20:.1f} MiB" if v >= 2**20 else f"{k} {v // 1024} KiB"
                           for k, v in self.caches.items())
        return (f"CPU: {self.cpu} | {self.logical_cores} logical cores ({self.physical_cores} physical), "
                f"torch uses {self.torch_threads} threads | RAM {self.ram_gb:.1f} GB | caches: {caches or 'unknown'} | "
                f"SIMD: {', '.join(self.simd) or 'baseline'} | Python {self.python} | torch {self.torch} | "
                f"device {self.device} | {self.os}")


def fingerprint(device: str = "auto") -> Fingerprint:
    """Hardware and software fingerprint of this machine."""
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "asimd", "sve")
            if f in flags]
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        dev = f"{dev} ({torch.cuda.get_device_name()})"
    return Fingerprint(
        cpu=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        torch_threads=torch.get_num_threads(),
        ram_gb=psutil.virtual_memory().total / 1e9,
        caches=cache_sizes(),
        simd=simd,
        python=platform.python_version(),
        torch=torch.__version__,
        device=dev,
        os=f"{platform.system()} {platform.release()}",
    )
