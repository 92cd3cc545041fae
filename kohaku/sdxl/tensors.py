"""Tensors one at a time: safetensors read with plain file reads, written as a stream.

Reads safetensors headers and single tensors at their byte offsets, with plain `readinto`
calls into reused buffers (`Scratch`): memory holds only the tensors in use. (safetensors'
own `safe_open` maps the file, and every mapped page read stays resident: merging two
6.9 GB files through it peaked at 14 GB RSS, see bench/README.md.)

Writes a safetensors file whose header is built up front from the output's names, shapes
and dtypes, then each tensor as it is computed, under a temporary name renamed into place
(the format: an 8-byte little-endian header size, a JSON header of dtype, shape and
data_offsets per tensor, then the raw bytes).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from kohaku.errors import InputError
from kohaku.stage import atomic_path

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lies in a file and what it is."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    specs: dict[str, TensorSpec]
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    """Names, dtypes, shapes and offsets of a safetensors file; no tensor is read."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            raw = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise InputError(f"{path} is not a readable safetensors file: {e}") from e
    meta = raw.pop("__metadata__", None) or {}
    specs = {}
    for name, entry in raw.items():
        if entry["dtype"] not in DTYPES:
            raise InputError(f"{path}: tensor {name} has dtype {entry['dtype']}, not supported")
        start, end = entry["data_offsets"]
        want = math.prod(entry["shape"]) * DTYPES[entry["dtype"]].itemsize
        if end - start != want:
            raise InputError(
                f"{path}: tensor {name} has {end - start} bytes, its shape and dtype need {want}"
            )
        specs[name] = TensorSpec(
            DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + size + start, 8 + size + end
        )
    return Header(specs, meta)


class TensorFile:
    """One open safetensors file; `get(name)` reads that tensor alone into memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header = read_header(self.path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed in close())

    def get(self, name: str, buf: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, read into `buf` (uint8, at least its size) or a new buffer."""
        spec = self.header.specs[name]
        if buf is None:
            buf = torch.empty(spec.nbytes, dtype=torch.uint8)
        buf = buf[: spec.nbytes]
        self._file.seek(spec.start)
        if self._file.readinto(memoryview(buf.numpy())) != spec.nbytes:
            raise InputError(f"{self.path} is truncated: tensor {name} ends past the file")
        return buf.view(spec.dtype).reshape(spec.shape)

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------- lazy tensors


class Lazy:
    """A tensor not read yet: its shape and dtype (as a meta tensor) and how to load it.

    torch functions and the few tensor methods the key converters of `kohaku.sdxl.model`
    use (`.T`, indexing, `torch.cat`) return new lazy tensors, so those converters map the
    names of a diffusers folder to SGM names without reading a single weight."""

    def __init__(self, meta: torch.Tensor, load: Callable[..., torch.Tensor]):
        self.meta, self._load = meta, load

    @classmethod
    def of(cls, file: TensorFile, name: str) -> Lazy:
        """A tensor of a file; it can be read into a given buffer (see `load`)."""
        spec = file.header.specs[name]
        meta = torch.empty(spec.shape, dtype=spec.dtype, device="meta")
        return cls(meta, lambda buf=None: file.get(name, buf))

    def load(self, buf: torch.Tensor | None = None) -> torch.Tensor:
        """Read it, into `buf` (uint8, `nbytes` at least) where it is a plain file tensor;
        computed ones (`.T`, `torch.cat`, ...) are new tensors."""
        return self._load(buf)

    shape = property(lambda self: tuple(self.meta.shape))
    dtype = property(lambda self: self.meta.dtype)
    ndim = property(lambda self: self.meta.ndim)
    nbytes = property(lambda self: self.meta.numel() * self.meta.element_size())
    T = property(lambda self: self.apply(lambda t: t.T))

    def __getitem__(self, index: Any) -> Lazy:
        return self.apply(lambda t: t[index])

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Lazy:
        return Lazy(fn(self.meta), lambda buf=None: fn(self.load()))

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        meta = func(*_swap(args, lambda x: x.meta), **kwargs)
        return Lazy(meta, lambda buf=None: func(*_swap(args, lambda x: x.load()), **kwargs))


def _swap(value: Any, fn: Callable[[Lazy], torch.Tensor]) -> Any:
    if isinstance(value, Lazy):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_swap(v, fn) for v in value)
    return value


class Scratch:
    """Named buffers reused from tensor to tensor. A new large tensor costs a page fault per
    4 KiB page on first touch: fp16 -> fp32 ran at 130M values/s into new tensors and at
    1.9G/s into a reused one (this machine, one thread)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def bytes(self, name: str, nbytes: int) -> torch.Tensor:
        """A uint8 buffer of `nbytes`; grows (and so is replaced) when too small."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            self._buffers.pop(name, None)  # free the old one before allocating
            buf = self._buffers[name] = torch.empty(nbytes, dtype=torch.uint8)
        return buf[:nbytes]

    def tensor(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape) * dtype.itemsize
        return self.bytes(name, size).view(dtype).reshape(shape)


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_bytes(specs: list[OutSpec], metadata: dict[str, str]) -> bytes:
    """The size prefix and JSON header, padded with spaces to 8 bytes as safetensors does."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for s in specs:
        header[s.name] = {
            "dtype": NAMES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    path: Path,
    specs: list[OutSpec],
    tensors: Iterable[torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `tensors` (in the order of `specs`, each checked against its spec) one by one."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(header_bytes(specs, metadata or {}))
        for spec, tensor in zip(specs, tensors, strict=True):
            _check_out(spec, tensor)
            f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the output
    return Path(path)


def _check_out(spec: OutSpec, tensor: torch.Tensor) -> None:
    if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
        raise ValueError(
            f"tensor {spec.name}: got {tensor.dtype} {tuple(tensor.shape)}, the "
            f"header says {spec.dtype} {spec.shape}"
        )
