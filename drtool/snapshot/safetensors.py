"""safetensors files: parse and validate the header, and hash each tensor's bytes while the file streams past."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

from drtool.errors import VerificationError
from drtool.snapshot.manifest import TensorRef

SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 << 20  # the limit the safetensors library itself enforces
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data region, as in the header
    end: int


@dataclass(frozen=True)
class SafetensorsLayout:
    data_start: int  # file offset of the data region: 8 + header length
    tensors: tuple[TensorSpan, ...]  # in data order


def is_safetensors(path: str) -> bool:
    return path.endswith(SUFFIX)


def read_layout(fd: int, file_size: int, name: str) -> tuple[SafetensorsLayout, int]:
    """The validated layout of an open safetensors file and the number of bytes read to get it.
    Tensors must tile the data region exactly: no overlap, no hole, nothing past the end of the file."""

    def bad(reason: str) -> VerificationError:
        return VerificationError(f"{name}: not a valid safetensors file: {reason}",
                                 hint="the file is damaged or not safetensors; fix or remove it and run again")

    if file_size < 8:
        raise bad(f"{file_size} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(os.pread(fd, 8, 0), "little")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise bad(f"header length {header_len} does not fit in the {file_size}-byte file")
    raw = os.pread(fd, header_len, 8)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate tensor name")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    spans = []
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {tname!r}: needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(dtype, str) and isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {tname!r}: malformed dtype, shape or data_offsets")
        if dtype in DTYPE_BYTES and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise bad(f"tensor {tname!r}: {offsets[1] - offsets[0]} bytes for {dtype} {shape}")
        spans.append(TensorSpan(tname, dtype, tuple(shape), offsets[0], offsets[1]))
    spans.sort(key=lambda s: (s.begin, s.end))
    data_len = file_size - 8 - header_len
    pos = 0
    for span in spans:
        if span.begin != pos:
            kind = "overlaps the previous tensor" if span.begin < pos else f"leaves a hole at {pos}"
            raise bad(f"tensor {span.name!r} at {span.begin} {kind}")
        pos = span.end
    if pos != data_len:
        raise bad(f"tensors cover {pos} bytes of a {data_len}-byte data region")
    return SafetensorsLayout(8 + header_len, tuple(spans)), 8 + header_len


class TensorHasher:
    """Feed the file's bytes in order (any chunking); get one SHA-256 per tensor."""

    def __init__(self, layout: SafetensorsLayout):
        self._start = layout.data_start
        self._spans = layout.tensors
        self._hashers = [hashlib.sha256() for _ in layout.tensors]
        self._i = 0

    def update(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        pos = max(offset, self._start)
        spans = self._spans
        while pos < end and self._i < len(spans):
            span = spans[self._i]
            span_end = self._start + span.end
            if span_end <= pos:
                self._i += 1
                continue
            take = min(span_end, end) - pos
            self._hashers[self._i].update(view[pos - offset:pos - offset + take])
            pos += take

    def results(self) -> tuple[TensorRef, ...]:
        refs = [TensorRef(s.name, s.dtype, s.shape, (s.begin, s.end), h.hexdigest())
                for s, h in zip(self._spans, self._hashers, strict=True)]
        return tuple(sorted(refs, key=lambda t: t.name))
