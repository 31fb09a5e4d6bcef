"""GGUF Q4_K from scratch: decode == gguf-py, encode == ggml's C reference (stored bytes), re-encode helper."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from utils import kquants

FIXTURE = Path(__file__).parent / "data" / "q4_k_ggml_ref.npz"
Q4_K = gguf.GGMLQuantizationType.Q4_K


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = np.load(FIXTURE)
    names = sorted(k[2:] for k in data.files if k.startswith("x_"))
    return {n: (data[f"x_{n}"], data[f"q_{n}"]) for n in names}


def test_gguf_py_has_no_q4_k_encoder() -> None:
    """Why the encoder is checked against ggml's C reference instead: gguf-py only decodes Q4_K."""
    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(np.zeros((1, 256), np.float32), Q4_K)


@pytest.mark.parametrize("name", sorted(_cases()))
def test_encode_matches_ggml_reference(name: str) -> None:
    x, want = _cases()[name]
    got = kquants.q4_k_encode(x)
    assert got.dtype == np.uint8 and got.shape == want.shape
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert bad.size == 0, f"{name}: rows {bad.tolist()} differ from ggml's quantize_row_q4_K_ref"


def test_encode_accepts_torch() -> None:
    x, want = _cases()["normal"]
    assert np.array_equal(kquants.q4_k_encode(torch.from_numpy(x)), want)


def test_decode_matches_gguf_on_reference_bytes() -> None:
    for name, (x, q) in _cases().items():
        ref = gguf.quants.dequantize(q, Q4_K).reshape(x.shape)
        assert np.array_equal(kquants.q4_k_decode(q, x.shape[1]), ref), name


def test_decode_matches_gguf_on_random_bytes() -> None:
    """Every bit pattern of the 6-bit scales, mins and nibbles (fp16 d, dmin kept finite)."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (512, kquants.Q4_K_BLOCK_BYTES), dtype=np.uint8)
    raw[:, 0:4] = rng.uniform(-2, 2, (512, 2)).astype(np.float16).view(np.uint8)
    ref = gguf.quants.dequantize(raw, Q4_K).reshape(-1, 256)
    assert np.array_equal(kquants.q4_k_decode(raw, 256), ref)
    assert np.array_equal(kquants.q4_k_decode(torch.from_numpy(raw.reshape(4, -1)), 128 * 256), ref.reshape(4, -1))


def test_roundtrip_error_is_small_and_layout_is_4_5_bits() -> None:
    x, q = _cases()["normal"]
    back = kquants.q4_k_decode(q, x.shape[1])
    rel = np.linalg.norm(back - x) / np.linalg.norm(x)
    assert rel < 0.1, rel
    assert q.size * 8 / x.size == kquants.BITS_PER_WEIGHT["Q4_K"] == 4.5


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.q4_k_encode(np.zeros((2, 576), np.float32))
    with pytest.raises(ValueError, match="finite"):
        kquants.q4_k_encode(np.full((1, 256), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        kquants.q4_k_decode(np.zeros(144, np.int8), 256)
    with pytest.raises(ValueError, match="fmt must be one of"):
        kquants.requantize(torch.zeros(2, 256), "Q3_K")


@pytest.mark.parametrize("fmt", ["Q8_0", "Q5_0", "Q4_0", "Q4_1"])
def test_requantize_matches_gguf(fmt: str) -> None:
    w = torch.randn(8, 576, generator=torch.Generator().manual_seed(1))
    qtype = gguf.GGMLQuantizationType[fmt]
    ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
    assert torch.equal(kquants.requantize(w, fmt), torch.from_numpy(ref))


def test_requantize_q4_k_and_llama_cpp_fallback() -> None:
    x, q = _cases()["normal"]
    w = torch.from_numpy(x)
    assert torch.equal(kquants.requantize(w, "Q4_K"), torch.from_numpy(kquants.q4_k_decode(q, x.shape[1])))
    narrow = torch.randn(4, 576, generator=torch.Generator().manual_seed(2))   # SmolLM2's d_model: not 256-aligned
    assert kquants.gguf_type_for("Q4_K", 576) == "Q5_0" and kquants.gguf_type_for("Q4_K", 1536) == "Q4_K"
    assert torch.equal(kquants.requantize(narrow, "Q4_K"), kquants.requantize(narrow, "Q5_0"))
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.requantize(narrow, "Q4_K", fallback=False)
