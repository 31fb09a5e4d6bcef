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
