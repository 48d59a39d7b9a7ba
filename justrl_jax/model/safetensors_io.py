"""Memory-mapped safetensors reading and writing with bfloat16 support.

``safetensors.numpy`` cannot represent bfloat16 (the dtype of the real checkpoints); this reader
maps the file and views each tensor through ``ml_dtypes``, so a sharded load touches only the
slices each device needs.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Name -> read-only memory-mapped array for every tensor in ``path``.

    A truncated or corrupt file is a ``ValueError`` naming it, found from the header and the file
    size alone (before any tensor is read).
    """
    size = os.path.getsize(path)
    damaged = f"{path} is truncated or not a safetensors file"
    with open(path, "rb") as f:
        if size < 8:
            raise ValueError(f"{damaged} ({size} bytes); re-download or re-export it")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise ValueError(f"{damaged} (its header claims {header_len} bytes of {size}); re-download or re-export it")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{damaged} (unreadable header: {e}); re-download or re-export it") from e
    if not isinstance(header, dict):
        raise ValueError(f"{damaged} (its header is not a JSON object); re-download or re-export it")
    data_size = size - 8 - header_len
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if data_size else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = (
                _DTYPES.get(info["dtype"]),
                [int(d) for d in info["shape"]],
                info["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{damaged} (bad header entry for {name!r}); re-download or re-export it") from e
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        if not 0 <= start <= end <= data_size or end - start != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(
                f"{damaged}: tensor {name!r} needs bytes {start}..{end} of {data_size}; re-download or re-export it"
            )
        out[name] = data[start:end].view(dtype).reshape(shape)
    return out


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``tensors`` in the safetensors format (PyTorch-loadable), atomically."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays:
            f.write(array.tobytes())
    os.replace(tmp, path)
