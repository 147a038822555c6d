"""safetensors files: parse and validate the header, and hash each tensor's bytes while the file streams past."""

import hashlib
import json
import math
import os
from dataclasses import dataclass

from drtool.errors import VerificationError
from drtool.snapshot.manifest import TensorRef

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


# A tensor of at least this size starts a part of its own and is cut into parts from its first byte (part_plan).
ALIGNED_TENSOR_MIN = 1 << 20


def part_plan(layout: SafetensorsLayout, file_size: int,
              part_size: int) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """The parts of a safetensors file, and which whole parts hold each large tensor.

    Each tensor of at least ALIGNED_TENSOR_MIN bytes begins a new part and is cut every `part_size` bytes from its
    own start; the header and runs of small tensors between them are cut the same way from their start. So every
    part is at most `part_size`, a large tensor's parts depend only on its own bytes (an edit of the header or of
    another tensor leaves them, and their blobs, as they were), and the digests of a large tensor's parts identify
    it without hashing its bytes a third time (the part digests and the whole-file digest are two passes already).
    Returns (part sizes in file order, {tensor name: (index of its first part, number of parts)})."""
    cuts = {0, file_size}
    for span in layout.tensors:
        if span.end - span.begin >= ALIGNED_TENSOR_MIN:
            cuts.update((layout.data_start + span.begin, layout.data_start + span.end))
    bounds = sorted(cuts)
    sizes: list[int] = []
    first_part: dict[int, int] = {}  # region start -> index of its first part
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        first_part[lo] = len(sizes)
        full, rest = divmod(hi - lo, part_size)
        sizes += [part_size] * full + ([rest] if rest else [])
    aligned = {}
    for span in layout.tensors:
        n = span.end - span.begin
        if n >= ALIGNED_TENSOR_MIN:
            aligned[span.name] = (first_part[layout.data_start + span.begin], -(-n // part_size))
    return sizes, aligned


class TensorHasher:
    """Feed the file's bytes in order (any chunking); get one SHA-256 per tensor, for the tensors not in `skip`
    (the large ones, which their parts identify)."""

    def __init__(self, layout: SafetensorsLayout, skip: set[str] | frozenset = frozenset()):
        self._start = layout.data_start
        self._spans = [s for s in layout.tensors if s.name not in skip]
        self._hashers = [hashlib.sha256() for _ in self._spans]
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
            pos = max(pos, self._start + span.begin)  # the hashed tensors need not be contiguous
            if pos >= end:
                break
            take = min(span_end, end) - pos
            self._hashers[self._i].update(view[pos - offset:pos - offset + take])
            pos += take

    def digests(self) -> dict[str, str]:
        return {s.name: h.hexdigest() for s, h in zip(self._spans, self._hashers, strict=True)}


def tensor_refs(layout: SafetensorsLayout, hashed: dict[str, str], aligned: dict[str, tuple[int, int]],
                part_digests: list[str]) -> tuple[TensorRef, ...]:
    """Every tensor's manifest record, sorted by name: a small tensor (or a large one in a single part, whose part
    digest is the SHA-256 of its bytes) by its SHA-256; a large tensor in several parts by those parts (first index
    and count), whose digests identify it."""
    refs = []
    for s in layout.tensors:
        if s.name in aligned:
            first, count = aligned[s.name]
            if count == 1:
                refs.append(TensorRef(s.name, s.dtype, s.shape, (s.begin, s.end), part_digests[first]))
            else:
                refs.append(TensorRef(s.name, s.dtype, s.shape, (s.begin, s.end), None, (first, count)))
        else:
            refs.append(TensorRef(s.name, s.dtype, s.shape, (s.begin, s.end), hashed[s.name]))
    return tuple(sorted(refs, key=lambda t: t.name))
