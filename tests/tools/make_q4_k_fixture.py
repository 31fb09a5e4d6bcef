"""Regenerate tests/data/q4_k_ggml_ref.npz: Q4_K bytes written by ggml's own C reference quantizer.

Needs a C compiler and a ggml checkout (https://github.com/ggml-org/ggml; the stored fixture was made from commit
d99724f2b141fed9e1a9f402213506c081433465). Compiles src/ggml-quants.c as ggml-base is built on x86-64 (no -march, so
no FMA contraction) and calls quantize_row_q4_K_ref on every case. Usage:
    python tests/tools/make_q4_k_fixture.py /path/to/ggml
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
const char * ggml_type_name(int t) { return "?"; }
size_t ggml_type_size(int t) { return 0; }
size_t ggml_row_size(int t, int64_t n) { return 0; }
"""


def cases() -> dict[str, np.ndarray]:
    """Inputs that exercise every branch of make_qkx2_quants and quantize_row_q4_K_ref."""
    rng = np.random.default_rng(2026)
    out = {
        "normal": rng.standard_normal((8, 1024)),
        "laplace": rng.laplace(size=(4, 1024)) * 0.02,
        "all_positive": np.abs(rng.standard_normal((2, 512))) + 0.5,
        "all_negative": -np.abs(rng.standard_normal((2, 512))) - 0.5,
        "zeros": np.zeros((1, 256)),
        "constant_negative": np.full((1, 256), -0.3),
        "constant_positive": np.full((1, 256), 0.7),
        "tiny": rng.standard_normal((2, 256)) * 1e-6,
        "integers": rng.integers(-8, 8, (2, 256)).astype(float),
        "half_grid": rng.integers(-30, 30, (2, 256)) / 2,
    }
    outl = rng.standard_normal((4, 512))
    outl[:, ::97] *= 50
    out["outliers"] = outl
    mixed = np.zeros((1, 1024))
    mixed[0, :256] = rng.standard_normal(256)
    mixed[0, 600:632] = 1e-3 * rng.standard_normal(32)
    out["zero_sub_blocks"] = mixed
    return {k: v.astype(np.float32) for k, v in out.items()}


def main(ggml: str) -> None:
    src = Path(ggml) / "src"
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs.c"
        stubs.write_text(STUBS)
        lib_path = Path(tmp) / "libq.so"
        subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-I", str(Path(ggml) / "include"), "-I", str(src),
                        str(src / "ggml-quants.c"), str(stubs), "-o", str(lib_path), "-lm"], check=True)
        lib = ctypes.CDLL(str(lib_path))
        data = {}
        for name, x in cases().items():
            flat = np.ascontiguousarray(x).ravel()
            y = np.zeros(flat.size // 256 * 144, dtype=np.uint8)
            lib.quantize_row_q4_K_ref(flat.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p),
                                      ctypes.c_int64(flat.size))
            data[f"x_{name}"] = x
            data[f"q_{name}"] = y.reshape(x.shape[0], -1)
    dest = Path(__file__).resolve().parents[1] / "data" / "q4_k_ggml_ref.npz"
    np.savez_compressed(dest, **data)
    print(f"wrote {dest} ({dest.stat().st_size:,} bytes, {len(data) // 2} cases)")


if __name__ == "__main__":
    main(sys.argv[1])
