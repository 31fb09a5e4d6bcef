"""utils.measure: timing, peak memory, parameter and FLOP counts, devices, fingerprint, roofline probes."""

import math
import time

import pytest
import torch
from torch import nn

from utils import measure
from utils.measure import Timing


# --------------------------------------------------------------------------- timing
def test_benchmark_counts_warmup_and_timed_calls_separately():
    calls = []
    timing = measure.benchmark(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(timing.times) == 5
    assert len(calls) == 3 + 5
    assert all(t >= 0 for t in timing.times)


def test_benchmark_without_warmup():
    calls = []
    timing = measure.benchmark(lambda: calls.append(1), warmup=0, repeats=2)
    assert len(calls) == len(timing.times) == 2


def test_benchmark_keeps_going_until_min_time():
    timing = measure.benchmark(lambda: time.sleep(0.002), warmup=0, repeats=2, min_time=0.03)
    assert len(timing.times) > 2
    assert sum(timing.times) >= 0.02


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"repeats": 0}])
def test_benchmark_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="warmup"):
        measure.benchmark(lambda: None, **kwargs)


def test_timing_statistics_on_known_lists():
    t = Timing([5.0, 1.0, 3.0, 2.0, 4.0])
    assert t.median == 3.0
    assert (t.min, t.max) == (1.0, 5.0)
    assert t.iqr == pytest.approx(3.0)  # quartiles 1.5 and 4.5
    assert t.spread == pytest.approx(1.0)
    assert Timing([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).iqr == pytest.approx(4.5)  # 6.75 - 2.25


def test_timing_iqr_of_few_samples_is_the_range():
    assert Timing([1.0, 2.0, 10.0]).iqr == 9.0
    assert Timing([0.5]).iqr == 0.0


def test_timing_str_says_median_and_count():
    s = str(Timing([0.002, 0.003, 0.004]))
    assert "3.00 ms median" in s and "n=3" in s
    assert str(Timing([2e-6])).startswith("2.0 µs median")
    assert str(Timing([2.0])).startswith("2.00 s median")


# --------------------------------------------------------------------------- memory
def test_peak_memory_sees_a_200_mb_allocation():
    with measure.PeakMemory() as mem:
        x = torch.ones(50_000_000)  # 200 MB, every page touched
        x += 1
    assert 150e6 < mem.increase < 600e6
    assert mem.peak >= mem.start
    del x


def test_rss_and_peak_rss_are_plausible():
    assert measure.rss_bytes() > 10e6
    assert measure.peak_rss_bytes() >= measure.rss_bytes() * 0.5


# --------------------------------------------------------------------------- counting
class TiedLM(nn.Module):
    def __init__(self, vocab=10, dim=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight


def test_count_params_counts_tied_weights_once():
    model = TiedLM()
    assert measure.count_params(model) == 10 * 4 + (4 * 4 + 4)


def test_param_bytes_counts_element_sizes_once():
    model = TiedLM().half()
    model.register_buffer("scale", torch.ones(3, dtype=torch.float32))
    assert measure.param_bytes(model) == (10 * 4 + 4 * 4 + 4) * 2 + 3 * 4


def _tiny_llama(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tie", [True, False])
def test_params_by_component_adds_up(tie):
    model = _tiny_llama(tie)
    groups = measure.params_by_component(model)
    assert sum(groups.values()) == measure.count_params(model)
    assert groups["embedding"] == 64 * 16
    assert groups["mlp"] == 2 * 3 * 16 * 32
    assert groups["attention"] == 2 * (16 * 16 + 2 * 16 * 8 + 16 * 16)  # q, k and v (2 KV heads of 4 dims), o
    assert groups["norms"] == (2 * 2 + 1) * 16
    assert "other" not in groups
    if tie:
        assert "lm_head (untied)" not in groups
    else:
        assert groups["lm_head (untied)"] == 64 * 16


def test_count_flops_of_a_matmul():
    m, k, n = 3, 5, 7
    a, b = torch.randn(m, k), torch.randn(k, n)
    total, by_op = measure.count_flops(lambda: a @ b)
    assert total == 2 * m * k * n
    assert sum(by_op.values()) == total


def test_count_flops_ignores_elementwise_work():
    x = torch.randn(100)
    assert measure.count_flops(lambda: x * 2 + 1)[0] == 0


# --------------------------------------------------------------------------- devices
def test_resolve_device_auto_matches_this_machine():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert measure.resolve_device("auto") == expected
    assert measure.resolve_device("cpu") == "cpu"


def test_resolve_device_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert measure.resolve_device("auto") == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_resolve_device_cuda_without_gpu_says_what_to_do(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as err:
        measure.resolve_device(device)
    assert "no CUDA GPU" in str(err.value) and "'auto'" in str(err.value) and "'cpu'" in str(err.value)


def test_resolve_device_mps_without_mps_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="MPS"):
        measure.resolve_device("mps")


def test_resolve_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="'tpu'"):
        measure.resolve_device("tpu")


def test_seed_everything_makes_torch_reproducible():
    measure.seed_everything(123)
    a = torch.randn(4)
    measure.seed_everything(123)
    assert torch.equal(a, torch.randn(4))


# --------------------------------------------------------------------------- fingerprint and roofline
def test_fingerprint_describes_this_machine():
    fp = measure.fingerprint("cpu")
    s = str(fp)
    assert "cores" in s and f"torch {torch.__version__}" in s
    assert fp.logical_cores >= 1 and fp.ram_gb > 0
    d = fp.as_dict()
    assert d["torch"] == torch.__version__ and d["device"] == "cpu"


def test_gemm_flops_is_a_positive_number():
    flops = measure.gemm_flops(128, repeats=2)
    assert math.isfinite(flops) and flops > 0


def test_memory_bandwidth_is_a_positive_number():
    bw = measure.memory_bandwidth(1 << 20, repeats=2)
    assert math.isfinite(bw) and bw > 0


def test_roofline_probes_reject_bad_sizes():
    with pytest.raises(ValueError, match="n must be positive"):
        measure.gemm_flops(0)
    with pytest.raises(ValueError, match="4096"):
        measure.memory_bandwidth(100)


def test_cache_sizes_are_bytes():
    assert all(isinstance(v, int) and v > 0 for v in measure.cache_sizes().values())


# --------------------------------------------------------------------------- portability
class _FakeProcess:
    def __init__(self, **fields):
        self._fields = fields

    def memory_info(self):
        import types

        return types.SimpleNamespace(**self._fields)


def test_peak_rss_without_resource_uses_psutil_peak_working_set(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` now raises ImportError, as on Windows
    monkeypatch.setattr(measure.psutil, "Process", lambda: _FakeProcess(rss=100, peak_wset=12345))
    assert measure.peak_rss_bytes() == 12345
    monkeypatch.setattr(measure.psutil, "Process", lambda: _FakeProcess(rss=777))  # no peak field: rss now
    assert measure.peak_rss_bytes() == 777


def test_peak_rss_on_macos_is_already_in_bytes(monkeypatch):
    import resource
    import types

    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=4096))
    monkeypatch.setattr(measure.platform, "system", lambda: "Darwin")
    assert measure.peak_rss_bytes() == 4096
    monkeypatch.setattr(measure.platform, "system", lambda: "Linux")
    assert measure.peak_rss_bytes() == 4096 * 1024


def _fake_sysctl(monkeypatch, values: dict):
    monkeypatch.setattr(measure.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(measure, "_sysctl", lambda key: values.get(key))


def test_cache_sizes_on_an_intel_mac(monkeypatch):
    _fake_sysctl(monkeypatch, {"hw.l1dcachesize": "32768", "hw.l2cachesize": "262144", "hw.l3cachesize": "8388608"})
    caches = measure.cache_sizes()
    assert caches == {"L1d": 32768, "L2": 262144, "L3": 8388608}
    assert measure.last_level_cache(caches) == ("L3", 8388608)


def test_cache_sizes_on_apple_silicon_without_l3(monkeypatch):
    _fake_sysctl(monkeypatch, {"hw.l1dcachesize": "65536", "hw.perflevel0.l2cachesize": "16777216",
                               "hw.l3cachesize": "0"})
    caches = measure.cache_sizes()
    assert caches == {"L1d": 65536, "L2": 16777216}
    assert measure.last_level_cache(caches) == ("L2", 16777216)
    assert measure.format_bytes(caches.get("L3")) == "unknown"


def test_cache_sizes_unknown_when_sysctl_has_no_keys(monkeypatch):
    _fake_sysctl(monkeypatch, {})
    assert measure.cache_sizes() == {}
    assert measure.last_level_cache({}) is None
    fp = measure.fingerprint("cpu")
    assert "caches: unknown" in str(fp) and "0 MiB" not in str(fp)


def test_format_bytes_never_says_zero():
    assert measure.format_bytes(None) == measure.format_bytes(0) == "unknown"
    assert measure.format_bytes(32 * 2**20) == "32 MiB"
    assert measure.format_bytes(48 * 1024) == "48 KiB"


def test_sysctl_missing_key_or_binary_gives_none(monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "unknown oid"))
    assert measure._sysctl("hw.l3cachesize") is None

    def no_binary(*a, **k):
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(subprocess, "run", no_binary)
    assert measure._sysctl("hw.l3cachesize") is None
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "8388608\n", ""))
    assert measure._sysctl("hw.l3cachesize") == "8388608"


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm dcpop asimddp sve bf16 i8mm
CPU implementer\t: 0x41
"""


def test_cpu_flags_on_arm_linux_read_features(monkeypatch):
    monkeypatch.setattr(measure, "_cpuinfo", lambda: ARM_CPUINFO)
    flags = measure.cpu_flags()
    assert {"asimd", "sve", "bf16", "i8mm"} <= flags
    assert measure.native_bf16(flags)
    assert {"asimd", "sve", "bf16", "i8mm"} <= set(measure.fingerprint("cpu").simd)


def test_cpu_flags_on_x86_linux(monkeypatch):
    monkeypatch.setattr(measure, "_cpuinfo", lambda: "model name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert measure.cpu_flags() == {"fpu", "sse2", "avx2", "avx512f"}
    assert not measure.native_bf16()
    assert measure.cpu_model() == "Test CPU"
    assert measure.native_bf16({"avx512_bf16"}) and measure.native_bf16({"amx_bf16"})


@pytest.mark.parametrize("bf16,i8mm", [("1", "1"), ("0", "1"), (None, None)])
def test_cpu_flags_on_apple_silicon_from_sysctl(monkeypatch, bf16, i8mm):
    monkeypatch.setattr(measure, "_cpuinfo", lambda: "")
    values = {"hw.optional.AdvSIMD": "1", "machdep.cpu.brand_string": "Apple M2"}
    if bf16 is not None:
        values |= {"hw.optional.arm.FEAT_BF16": bf16, "hw.optional.arm.FEAT_I8MM": i8mm}
    _fake_sysctl(monkeypatch, values)
    flags = measure.cpu_flags()
    assert "asimd" in flags
    assert ("bf16" in flags) == (bf16 == "1") and ("i8mm" in flags) == (i8mm == "1")
    assert measure.native_bf16(flags) == (bf16 == "1")
    assert measure.cpu_model() == "Apple M2"


# --------------------------------------------------------------------------- theoretical peak, cache reads, GGUF sizes
def test_theoretical_peak_is_cores_clock_lanes_fma_two():
    # 2 cores x 2.45 GHz x 8 fp32 lanes (AVX2) x 2 FMA units x 2 FLOPs per FMA
    assert measure.theoretical_peak_flops(2, 2.45e9, 256, 2) == pytest.approx(156.8e9)
    assert measure.theoretical_peak_flops(1, 1e9, 512, 2, element_bits=16) == 128e9
    with pytest.raises(ValueError, match="fma_units must be positive"):
        measure.theoretical_peak_flops(2, 2e9, 256, 0)
    with pytest.raises(ValueError, match="multiple of element_bits"):
        measure.theoretical_peak_flops(2, 2e9, 100, 2)


def test_simd_bits_from_flags():
    assert measure.simd_bits({"avx512f", "avx2"}) == 512
    assert measure.simd_bits({"avx2", "fma"}) == 256
    assert measure.simd_bits({"asimd"}) == 128


def test_cpu_clock_is_none_or_plausible():
    hz = measure.cpu_clock_hz()
    assert hz is None or 1e8 < hz < 1e10


def test_cached_read_bandwidth_is_positive_and_validates():
    assert measure.cached_read_bandwidth(64 * 1024, total_bytes=4 * 2**20, repeats=2) > 0
    with pytest.raises(ValueError, match="at least 4096"):
        measure.cached_read_bandwidth(1024)
    with pytest.raises(ValueError, match="total_bytes"):
        measure.cached_read_bandwidth(2**20, total_bytes=2**19)


def test_gguf_tensor_sizes_of_a_small_file(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("a", np.ones((4, 32), dtype=np.float32))
    w.add_tensor("b", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    sizes = measure.gguf_tensor_sizes(path)
    assert sizes == {"F32": {"tensors": 2, "weights": 136, "bytes": 136 * 4}}
