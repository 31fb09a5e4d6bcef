"""Timing done right: repeated and interleaved timings, ratios with intervals, a decode cost model, busy machines.

Thread counts on a shared 2-core machine, measured for the course (2-core AMD EPYC VM, fp32, interleaved 1-vs-2-thread
rounds, `compare`; load average 2.7-3.4 throughout because other jobs shared the machine):

| workload                         | other load              | time(1 thread) / time(2 threads), 95% CI   |
|----------------------------------|-------------------------|--------------------------------------------|
| GEMV, 128 MiB fp32 weight        | other jobs (load 2.7)   | 0.94 (0.91-0.99), 21 pairs: 1 thread faster |
| GEMV, 128 MiB fp32 weight        | + `while True: pass`    | 0.99 (0.90-1.04), 21 pairs: not resolved    |
| SmolLM2-135M decode (6 steps)    | other jobs (load 2.7)   | 0.33 (0.31-1.0), 9 pairs: not resolved      |
| SmolLM2-135M decode (6 steps)    | + `while True: pass`    | 0.42 (0.39-0.49), 9 pairs: 1 thread faster  |
| SmolLM2-135M prefill, 256 tokens | other jobs (load ~2)    | 1.39 (1.14-1.58), 9 pairs: 2 threads faster |

With one competing single-threaded process, 1 thread decoded at 248 ms/token and 2 threads at 570 ms/token: two
threads on two cores share one of them with the other process, and every one of the step's hundreds of small
parallel regions waits for the thread that is not running. The memory-bound GEMV gains nothing from a second thread
even then. Only compute-bound prefill gains from all cores, and only while nothing else runs. Hence the robust
default `recommended_threads()`: the usable cores minus one (1 on a 2-core laptop); pass all cores explicitly to
measure peak compute on a quiet machine. A quick GEMM probe (`check_machine`) is only a warning signal: under the
competing process its 2-thread best-of-5 still beat 1 thread (119 vs 66 GFLOP/s), while decode lost 2.3x.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work so a timer measures it (no-op on the CPU)."""
    dev = str(device or "")
    if dev.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    elif dev == "mps":
        torch.mps.synchronize()


def _fmt_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


# --------------------------------------------------------------------------- repeated timings
@dataclass
class Timing:
    """Wall-clock seconds of repeated calls: the median is the typical cost, the best (min) the peak rate."""

    times: list[float] = field(repr=False)
    busy: BusyReport | None = field(default=None, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def best(self) -> float:
        """The fastest call: what the machine can do when nothing gets in the way (STREAM's convention for rates)."""
        return self.min

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

    def best_rate(self, work: float) -> float:
        """Peak rate: `work` (FLOPs, bytes, tokens) per second of the fastest call."""
        return work / self.best

    def median_rate(self, work: float) -> float:
        """Typical rate: `work` per second of the median call."""
        return work / self.median

    def __str__(self) -> str:
        s = f"{_fmt_s(self.median)} median (IQR {_fmt_s(self.iqr)}, min {_fmt_s(self.min)}, n={len(self.times)})"
        return s + (f"  {self.busy.warning}" if self.busy is not None and self.busy.busy else "")


def benchmark(fn: Callable[[], object], warmup: int = 2, repeats: int = 10, min_time: float = 0.0,
              device: str | None = None, check_busy: bool = False) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then `repeats` timed calls (more until `min_time` s have passed)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if min_time < 0:
        raise ValueError(f"min_time must be >= 0 seconds, got {min_time}")
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
    return Timing(times, busy=check_machine(probe=False) if check_busy else None)


# --------------------------------------------------------------------------- interleaved A/B
def min_pairs(level: float) -> int:
    """Fewest paired timings whose median has a distribution-free two-sided interval at `level`."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return math.ceil(math.log2(2 / (1 - level)))


@dataclass
class Comparison:
    """Interleaved A/B timing: per-round ratios time(A)/time(B), their median and an interval for it."""

    a: Timing
    b: Timing
    ratios: list[float] = field(repr=False)
    ratio: float
    low: float
    high: float
    level: float
    labels: tuple[str, str] = ("A", "B")
    busy: BusyReport | None = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        """'<B> faster' when the whole interval is above 1, '<A> faster' when below, else 'not resolved'."""
        if self.low > 1:
            return f"{self.labels[1]} faster"
        if self.high < 1:
            return f"{self.labels[0]} faster"
        return "not resolved"

    def __str__(self) -> str:
        a, b = self.labels
        s = (f"time({a}) / time({b}) = {self.ratio:.3g} ({self.level:.0%} CI {self.low:.3g}–{self.high:.3g}, "
             f"{len(self.ratios)} interleaved pairs): {self.verdict}")
        return s + (f"  {self.busy.warning}" if self.busy is not None and self.busy.busy else "")


def compare(fn_a: Callable[[], object], fn_b: Callable[[], object], rounds: int = 15, warmup: int = 2,
            inner: int = 1, level: float = 0.95, device: str | None = None, labels: tuple[str, str] = ("A", "B"),
            check_busy: bool = True, clock: Callable[[], float] = time.perf_counter) -> Comparison:
    """Time A and B in alternating order (AB, BA, AB, ...) and report time(A)/time(B) with an interval.

    Each round times `inner` calls of A and of B back to back, so both see the same machine state; the ratio of a
    round cancels slow drifts (clock frequency, other programs). The interval is the distribution-free interval for
    the median of the per-round ratios (binomial order statistics, `scipy.stats.quantile_test`), robust to the
    occasional round that another process disturbed. `clock` is injectable for tests.
    """
    from scipy.stats import quantile_test

    need = min_pairs(level)
    if rounds < need:
        raise ValueError(f"rounds must be >= {need} for a {level:.0%} interval of the median ratio, got {rounds}")
    if warmup < 0 or inner < 1:
        raise ValueError(f"need warmup >= 0 and inner >= 1, got warmup={warmup}, inner={inner}")
    if len(labels) != 2:
        raise ValueError(f"labels must be two names, got {labels!r}")

    def timed(fn: Callable[[], object]) -> float:
        synchronize(device)
        t0 = clock()
        for _ in range(inner):
            fn()
        synchronize(device)
        return (clock() - t0) / inner

    for _ in range(warmup):
        fn_a()
        fn_b()
    ta: list[float] = []
    tb: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            ta.append(timed(fn_a))
            tb.append(timed(fn_b))
        else:
            tb.append(timed(fn_b))
            ta.append(timed(fn_a))
    if min(tb) <= 0 or min(ta) <= 0:
        raise ValueError("a timed call took 0 s on this clock: raise `inner` so each timing is measurable")
    ratios = [x / y for x, y in zip(ta, tb)]
    ci = quantile_test(ratios, q=statistics.median(ratios)).confidence_interval(level)
    return Comparison(Timing(ta), Timing(tb), ratios, statistics.median(ratios), float(ci.low), float(ci.high),
                      level, tuple(labels), busy=check_machine() if check_busy else None)


# --------------------------------------------------------------------------- decode cost model
@dataclass
class DecodeCost:
    """Fitted `seconds/token ≈ overhead + bytes read per token / bandwidth`, with the fit's residuals."""

    overhead_s: float
    bandwidth: float
    overhead_stderr: float
    bandwidth_stderr: float
    bytes_per_token: list[float] = field(repr=False)
    seconds_per_token: list[float] = field(repr=False)

    def predict(self, bytes_per_token: float) -> float:
        """Predicted seconds per token for a model that reads `bytes_per_token`."""
        return self.overhead_s + bytes_per_token / self.bandwidth

    @property
    def residuals(self) -> list[float]:
        """Measured minus predicted seconds per token, one per point."""
        return [s - self.predict(b) for b, s in zip(self.bytes_per_token, self.seconds_per_token)]

    @property
    def max_relative_residual(self) -> float:
        """Largest |residual| relative to its measured time: how well two terms explain the points."""
        return max(abs(r) / s for r, s in zip(self.residuals, self.seconds_per_token))

    def __str__(self) -> str:
        return (f"time/token ≈ {self.overhead_s * 1e3:.2f} ms (± {self.overhead_stderr * 1e3:.2f}) + bytes / "
                f"{self.bandwidth / 1e9:.1f} GB/s (± {self.bandwidth_stderr / 1e9:.1f}); "
                f"max residual {self.max_relative_residual:.0%} over {len(self.bytes_per_token)} points")


def fit_decode_cost(bytes_per_token: Sequence[float], seconds_per_token: Sequence[float]) -> DecodeCost:
    """Least-squares fit of the two-term decode cost model to measured decode steps (one point per model/format)."""
    from scipy.stats import linregress

    x = [float(b) for b in bytes_per_token]
    y = [float(s) for s in seconds_per_token]
    if len(x) != len(y):
        raise ValueError(f"bytes_per_token and seconds_per_token differ in length: {len(x)} vs {len(y)}")
    if not all(math.isfinite(v) and v > 0 for v in x + y):
        raise ValueError("bytes and seconds per token must be positive finite numbers")
    if len(x) < 3 or len(set(x)) < 2:
        raise ValueError(f"the fit is under-determined: need at least 3 points at 2 or more different byte counts "
                         f"(2 points fit any line exactly and leave no residual to check), got {len(x)} points at "
                         f"{len(set(x))} byte count(s)")
    fit = linregress(x, y)
    if fit.slope <= 0:
        raise ValueError(f"decode time does not grow with bytes read (slope {fit.slope:.3g} s/byte): the points are "
                         "dominated by noise or overhead; spread the byte counts further or measure on a quiet machine")
    bandwidth = 1 / fit.slope
    return DecodeCost(float(fit.intercept), float(bandwidth), float(fit.intercept_stderr),
                      float(fit.stderr / fit.slope**2), x, y)


# --------------------------------------------------------------------------- busy machine
def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def load_average() -> float | None:
    """One-minute load average (runnable tasks), or None where the OS does not report one."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        try:
            return float(psutil.getloadavg()[0])  # emulated on Windows (0.0 for its first few seconds)
        except (AttributeError, OSError):
            return None


@contextmanager
def threads(n: int):
    """Run the block with `n` torch threads, restoring the previous count afterwards."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_rate(n_threads: int | None = None, size: int = 384, repeats: int = 5) -> float:
    """Quick calibration probe: best-of-`repeats` GFLOP/s of a `size`³ fp32 matmul on the CPU (~10 ms)."""
    if size < 16 or repeats < 1:
        raise ValueError(f"need size >= 16 and repeats >= 1, got size={size}, repeats={repeats}")
    n_threads = n_threads or torch.get_num_threads()
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    with threads(n_threads):
        t = benchmark(lambda: a @ b, warmup=1, repeats=repeats)
    return 2 * size**3 / t.best / 1e9


_QUIET_PROBE: dict[int, float] = {}


@dataclass
class BusyReport:
    """Is the machine busy? Load average vs cores, and the calibration probe vs its quiet value."""

    load: float | None
    cores: int
    threads: int
    probe: float | None = None
    quiet_probe: float | None = None
    probe_one_thread: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.reasons)

    @property
    def warning(self) -> str:
        """A one-line warning to print next to a timing ('' on a quiet machine)."""
        if not self.reasons:
            return ""
        return "⚠ busy machine (" + "; ".join(self.reasons) + "): this timing is not this machine's capability"

    def __str__(self) -> str:
        load = "n/a" if self.load is None else f"{self.load:.2f}"
        return self.warning or f"quiet: load {load} on {self.cores} cores, {self.threads} torch thread(s)"


def check_machine(probe: bool = True, quiet_probe: float | None = None, n_threads: int | None = None,
                  slow_factor: float = 0.5) -> BusyReport:
    """Detect a busy machine: load average above the usable cores, or the probe far below its quiet value.

    The quiet value is `quiet_probe` (GFLOP/s) if given, else the best probe seen in this process at the same thread
    count. With more than one thread, the probe is also run on one thread: n threads slower than one means other
    processes hold the cores (oversubscription), whatever the history.
    """
    if not 0 < slow_factor < 1:
        raise ValueError(f"slow_factor must be in (0, 1), got {slow_factor}")
    n = n_threads or torch.get_num_threads()
    report = BusyReport(load=load_average(), cores=usable_cores(), threads=n)
    if report.load is not None and report.load > report.cores:
        report.reasons.append(f"load average {report.load:.1f} > {report.cores} cores")
    if probe:
        report.probe = probe_rate(n)
        best = max(_QUIET_PROBE.get(n, 0.0), report.probe)
        _QUIET_PROBE[n] = best
        report.quiet_probe = quiet_probe if quiet_probe is not None else best
        if report.probe < slow_factor * report.quiet_probe:
            report.reasons.append(f"probe {report.probe:.0f} GFLOP/s < {slow_factor:.0%} of its quiet "
                                  f"{report.quiet_probe:.0f} GFLOP/s")
        if n > 1:
            report.probe_one_thread = probe_rate(1)
            if report.probe < 0.8 * report.probe_one_thread:
                report.reasons.append(f"{n} threads run slower than 1 ({report.probe:.0f} vs "
                                      f"{report.probe_one_thread:.0f} GFLOP/s): other processes hold the cores")
    return report


def recommended_threads(max_threads: int | None = None) -> int:
    """Robust torch thread count for timing on a shared machine: the usable cores minus one, at least 1.

    Leaving one core to the browser, the OS and the Jupyter server means no torch thread has to share a core with
    another busy process; see the module docstring for the measurement behind this choice.
    """
    if max_threads is not None and (not isinstance(max_threads, int) or max_threads < 1):
        raise ValueError(f"max_threads must be a positive integer or None, got {max_threads!r}")
    n = max(1, usable_cores() - 1)
    return min(n, max_threads) if max_threads else n
