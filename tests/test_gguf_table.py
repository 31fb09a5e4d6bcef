"""utils.gguf_table reads the same tensor table as gguf's GGUFReader, much faster, and rejects non-GGUF files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from utils import assets, gguf_table


def test_same_tensors_as_gguf_reader():
    path = assets.gguf_path()
    mine = gguf_table.read_tensors(path)
    ref = gguf.GGUFReader(str(path)).tensors
    assert list(mine) == [t.name for t in ref]
    for t in ref:
        m = mine[t.name]
        assert m.tensor_type == t.tensor_type
        assert m.shape == tuple(int(d) for d in t.shape)
        assert m.data.dtype == t.data.dtype and m.data.shape == t.data.shape
        assert np.array_equal(np.asarray(m.data), np.asarray(t.data)), t.name


def test_rejects_a_file_that_is_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_table.read_tensors(p)
