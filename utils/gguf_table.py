"""A GGUF file's tensor table without its metadata: names, types, shapes and memory-mapped raw data.

`gguf.GGUFReader` builds a numpy view for every metadata value, including the ~98,000 strings of SmolLM2's
tokenizer, which takes seconds; notebook 06 needs only the tensors. This reader walks the same layout (GGUF v2/v3:
header, key/value pairs, tensor infos, aligned data; `gguf/gguf_reader.py` and ggml's ``docs/gguf.md``), skipping
each metadata value by its length, and returns the tensors as gguf's reader does (same `data` arrays, same
`shape` order), so the two can be compared (tests/test_gguf_table.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GGUF metadata value types -> fixed size in bytes (8: string, 9: array are variable)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64}


@dataclass
class TensorEntry:
    """One tensor of a GGUF file: `shape` as GGUF stores it (fastest dimension first), `data` as gguf's reader
    gives it (float arrays for plain types, uint8 [rows, bytes per row] for block formats)."""

    name: str
    tensor_type: object          # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


class _Cursor:
    def __init__(self, buf: np.ndarray):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> str:
        n = self.unpack("Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> None:
        if vtype == _STRING:
            n = self.unpack("Q")                      # read first: `self.pos += self.unpack(...)` loses 8 bytes
            self.pos += n
        elif vtype == _ARRAY:
            etype, count = self.unpack("IQ")
            if etype in _SIZES:
                self.pos += _SIZES[etype] * count
            else:
                for _ in range(count):
                    self.skip_value(etype)
        elif vtype in _SIZES:
            self.pos += _SIZES[vtype]
        else:
            raise ValueError(f"unknown GGUF metadata value type {vtype} at byte {self.pos}: not a GGUF v2/v3 file?")


def read_tensors(path: str | Path) -> dict[str, TensorEntry]:
    """{name: TensorEntry} of a GGUF file, in file order, reading only the header, tensor infos and (lazily, by
    memory map) the tensor bytes; raises ValueError if the file is not GGUF v2/v3."""
    import gguf

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    cur.pos = 4
    version, n_tensors, n_kv = cur.unpack("IQQ")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key, vtype = cur.string(), cur.unpack("I")
        if key == "general.alignment" and vtype == 4:
            alignment = cur.unpack("I")
        else:
            cur.skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        dims = tuple(int(d) for d in struct.unpack_from(f"<{n_dims}Q", buf, cur.pos))
        cur.pos += 8 * n_dims
        raw_type, offset = cur.unpack("IQ")
        infos.append((name, dims, gguf.GGMLQuantizationType(raw_type), offset))
    start = -(-cur.pos // alignment) * alignment
    out = {}
    for name, dims, qtype, offset in infos:
        n = int(np.prod(dims))
        np_dims = tuple(reversed(dims))
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        at = start + offset
        if qtype.name in _PLAIN:
            dt = np.dtype(_PLAIN[qtype.name])
            data = buf[at:at + n * dt.itemsize].view(dt).reshape(np_dims)
        else:
            data = buf[at:at + n * type_size // block].reshape(gguf.quant_shape_to_byte_shape(np_dims, qtype))
        out[name] = TensorEntry(name, qtype, dims, data)
    return out
