"""The safetensors file layout, byte-identical to safetensors' own files: dtype names and order, the header, each
tensor's bytes."""

from __future__ import annotations

import functools
import json
import struct

from lib_lora.errors import LoraStudioError

_ST_DTYPES = [("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("F8_E5M2", "float8_e5m2"),
              ("F8_E4M3", "float8_e4m3fn"), ("I16", "int16"), ("F16", "float16"), ("BF16", "bfloat16"),
              ("I32", "int32"), ("F32", "float32"), ("F64", "float64"), ("I64", "int64")]


def _st_rank() -> dict:
    import torch

    return {getattr(torch, tname): (i, sname) for i, (sname, tname) in enumerate(_ST_DTYPES)
            if hasattr(torch, tname)}


def _st_layout(tensors: dict, metadata: dict | None) -> tuple[bytes, list]:
    """(header bytes incl. length prefix, [(key, tensor)] in file order), laid out as safetensors.torch.save
    does (byte-identical files), so the body hash matches a file written by safetensors itself."""
    import torch

    items = []
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise LoraStudioError(f"cannot save '{k}': not a tensor")
        items.append((str(k), t))
    head, order = _st_header([(k, t.dtype, tuple(t.shape)) for k, t in items], metadata)
    by_key = dict(items)
    return head, [(k, by_key[k]) for k, _, _ in order]


def _st_header(specs: list, metadata: dict | None) -> tuple[bytes, list]:
    """`specs` = [(key, torch dtype, shape)] → (header bytes incl. length prefix, specs in file order)."""
    rank = _st_rank()
    for k, dt, _ in specs:
        if dt not in rank:
            raise LoraStudioError(f"cannot save '{k}': dtype {dt} has no safetensors equivalent")
    order = sorted(specs, key=lambda s: (-rank[s[1]][0], s[0]))
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for k, dt, shape in order:
        n = _numel(shape) * _itemsize(dt)
        header[k] = {"dtype": rank[dt][1], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@functools.lru_cache(maxsize=None)   # called per tensor and per piece (thousands per checkpoint)
def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _tensor_bytes(t):
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")
