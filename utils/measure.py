"""Measuring cost: timing done right, peak memory, parameter/byte/FLOP counts, this machine's roofline."""

from __future__ import annotations

import gc
import os
import platform
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from .timing import (  # noqa: F401  (re-exported: notebooks call measure.benchmark etc.)
    BusyReport,
    Comparison,
    DecodeCost,
    Timing,
    benchmark,
    check_machine,
    compare,
    fit_decode_cost,
    recommended_threads,
    synchronize,
    threads,
)


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


# --------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident memory of this process now."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started (the OS's high-water mark).

    Uses `resource` on Linux and macOS; where it is missing (native Windows) psutil's peak working set.
    """
    try:
        import resource
    except ImportError:
        info = psutil.Process().memory_info()
        peak = getattr(info, "peak_wset", None)  # Windows: peak working set in bytes
        return int(peak) if peak else int(info.rss)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024 if platform.system() != "Darwin" else kb  # macOS reports bytes, Linux KiB


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
def _pick(t: Timing, stat: str) -> float:
    if stat == "best":
        return t.best
    if stat == "median":
        return t.median
    raise ValueError(f"stat must be 'best' (peak rate, STREAM convention) or 'median', got {stat!r}")


def gemm_flops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 5, device: str = "cpu",
               stat: str = "best") -> float:
    """Measured FLOP/s of an n x n x n matrix multiply (2 n^3 FLOPs per call): best (default) or median of `repeats`."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    _pick(Timing([1.0]), stat)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = benchmark(lambda: a @ b, warmup=1, repeats=repeats, device=device)
    return 2 * n**3 / _pick(t, stat)


def memory_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, device: str = "cpu", stat: str = "best") -> float:
    """Measured read bandwidth (bytes/s) of summing a float32 buffer of `nbytes`: best (default) or median."""
    if nbytes < 4096:
        raise ValueError(f"nbytes must be at least 4096, got {nbytes}")
    _pick(Timing([1.0]), stat)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    inner = max(1, int(4 * 2**20 // nbytes))  # repeat tiny buffers inside one timed call

    def run():
        for _ in range(inner):
            x.sum()

    t = benchmark(run, warmup=2, repeats=repeats, device=device)
    return inner * x.numel() * 4 / _pick(t, stat)


def _sysctl(key: str) -> str | None:
    """`sysctl -n key` on macOS/BSD, or None when the key (or sysctl) is absent."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def cache_sizes() -> dict[str, int]:
    """CPU cache sizes in bytes as the OS reports them (L1d, L2, L3 per instance); levels it does not report are absent.

    Linux: /sys/devices/system/cpu/cpu0/cache. macOS: sysctl hw.l1dcachesize / hw.l2cachesize / hw.l3cachesize
    (Apple silicon has no L3 key, and reports its performance cores as hw.perflevel0.*). Elsewhere: {}.
    """
    out: dict[str, int] = {}
    if platform.system() == "Darwin":
        for name, keys in (("L1d", ("hw.l1dcachesize", "hw.perflevel0.l1dcachesize")),
                           ("L2", ("hw.l2cachesize", "hw.perflevel0.l2cachesize")),
                           ("L3", ("hw.l3cachesize", "hw.perflevel0.l3cachesize"))):
            for key in keys:
                value = _sysctl(key)
                if value and value.isdigit() and int(value) > 0:
                    out[name] = int(value)
                    break
        return out
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if base.is_dir():
        for idx in sorted(base.glob("index*")):
            try:
                level = (idx / "level").read_text().strip()
                kind = (idx / "type").read_text().strip()
                size = (idx / "size").read_text().strip()
            except OSError:
                continue
            if kind == "Instruction" or not size:
                continue
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
            num = int(size[:-1]) if size[-1] in "KMG" else int(size)
            if num > 0:
                out[f"L{level}" + ("d" if kind == "Data" else "")] = num * mult
    return out


def last_level_cache(caches: dict[str, int] | None = None) -> tuple[str, int] | None:
    """(name, bytes) of the largest cache level the OS reports, or None when it reports none."""
    caches = cache_sizes() if caches is None else caches
    if not caches:
        return None
    name = max(caches, key=lambda k: (int(k[1]), caches[k]))
    return name, caches[name]


def format_bytes(n: int | None) -> str:
    """'32 MiB', '48 KiB' — or 'unknown' for a size the OS did not report (None or 0)."""
    if not n:
        return "unknown"
    if n >= 2**20:
        return f"{n / 2**20:.3g} MiB"
    return f"{n / 2**10:.3g} KiB"


# --------------------------------------------------------------------------- fingerprint
def _cpuinfo() -> str:
    """Text of /proc/cpuinfo ('' where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), sysctl (macOS) or platform."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine()


_MAC_FEATURES = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_I8MM": "i8mm",
                 "hw.optional.AdvSIMD": "asimd", "hw.optional.arm.FEAT_DotProd": "asimddp",
                 "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f"}


def cpu_flags() -> set[str]:
    """CPU feature flags: x86 `flags` / ARM `Features` of /proc/cpuinfo (Linux), sysctl hw.optional.* (macOS).

    Names follow Linux: avx2, avx512f, avx512_bf16, amx_bf16 on x86; asimd, bf16, i8mm, sve on ARM.
    """
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):
            flags |= set(line.split(":", 1)[1].split())
    if not flags and platform.system() == "Darwin":
        flags = {name for key, name in _MAC_FEATURES.items() if _sysctl(key) == "1"}
    return flags


def native_bf16(flags: set[str] | None = None) -> bool:
    """Does this CPU have bf16 arithmetic instructions (x86 avx512_bf16 / amx_bf16, ARM bf16)?"""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


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
                           for k, v in self.caches.items() if v)
        return (f"CPU: {self.cpu} | {self.logical_cores} logical cores ({self.physical_cores} physical), "
                f"torch uses {self.torch_threads} threads | RAM {self.ram_gb:.1f} GB | caches: {caches or 'unknown'} | "
                f"SIMD: {', '.join(self.simd) or 'baseline'} | Python {self.python} | torch {self.torch} | "
                f"device {self.device} | {self.os}")


def fingerprint(device: str = "auto") -> Fingerprint:
    """Hardware and software fingerprint of this machine."""
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "asimd", "sve",
                        "bf16", "i8mm") if f in flags]
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


# --------------------------------------------------------------------------- theoretical peak and cache-level reads
def cpu_clock_hz() -> float | None:
    """The CPU clock the OS reports (highest `cpu MHz` in /proc/cpuinfo, else psutil's max), or None if unknown."""
    mhz = [float(line.split(":", 1)[1]) for line in _cpuinfo().splitlines() if line.startswith("cpu MHz")]
    if mhz:
        return max(mhz) * 1e6
    freq = psutil.cpu_freq()
    if freq is not None and (freq.max or freq.current):
        return float(freq.max or freq.current) * 1e6
    return None


def simd_bits(flags: set[str] | None = None) -> int:
    """Widest vector register for float arithmetic this CPU reports: 512 (avx512f), 256 (avx/avx2), else 128."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 512
    if flags & {"avx2", "avx"}:
        return 256
    return 128  # SSE2 on x86-64, NEON (asimd) on ARM


def theoretical_peak_flops(cores: int, clock_hz: float, simd_width_bits: int, fma_units: int,
                           element_bits: int = 32) -> float:
    """Peak FLOP/s = cores x clock x (SIMD lanes) x FMA units x 2 (an FMA is a multiply and an add)."""
    for name, v in (("cores", cores), ("clock_hz", clock_hz), ("simd_width_bits", simd_width_bits),
                    ("fma_units", fma_units), ("element_bits", element_bits)):
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    if simd_width_bits % element_bits:
        raise ValueError(f"simd_width_bits ({simd_width_bits}) must be a multiple of element_bits ({element_bits})")
    return cores * clock_hz * (simd_width_bits // element_bits) * fma_units * 2


def cached_read_bandwidth(nbytes: int, total_bytes: int = 64 * 2**20, repeats: int = 5, device: str = "cpu",
                          stat: str = "best") -> float:
    """Read bandwidth (bytes/s) of a buffer of `nbytes` re-read inside ONE call until `total_bytes` are read.

    `x.expand(k, n).sum()` reads the same n floats k times in a single kernel, so the few microseconds every call costs
    are paid once per `total_bytes`, not once per buffer: small buffers then show the bandwidth of the cache they sit
    in, not the call overhead (which `memory_bandwidth` pays on every call of a tiny buffer).
    """
    if nbytes < 4096:
        raise ValueError(f"nbytes must be at least 4096, got {nbytes}")
    if total_bytes < nbytes:
        raise ValueError(f"total_bytes ({total_bytes}) must be at least nbytes ({nbytes})")
    _pick(Timing([1.0]), stat)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    k = max(1, total_bytes // (x.numel() * 4))
    view = x.expand(k, x.numel())
    t = benchmark(lambda: view.sum(), warmup=1, repeats=repeats, device=device)
    return k * x.numel() * 4 / _pick(t, stat)


def gguf_tensor_sizes(path: str | Path) -> dict[str, dict[str, int]]:
    """Bytes and weights per tensor type of a GGUF file, read from its tensor table with the `gguf` library.

    Returns {type name: {"tensors": count, "weights": elements, "bytes": stored bytes}} (e.g. Q4_1, Q8_0, F32).
    """
    import gguf

    out: dict[str, dict[str, int]] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        row = out.setdefault(t.tensor_type.name, {"tensors": 0, "weights": 0, "bytes": 0})
        row["tensors"] += 1
        row["weights"] += int(t.n_elements)
        row["bytes"] += int(t.n_bytes)
    return out
