"""Streaming safetensors I/O: what the writer streams, safetensors reads back, and back."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kohaku.errors import InputError
from kohaku.sdxl.tensors import Lazy, OutSpec, TensorFile, read_header, write_safetensors


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    return {
        "f32": x,
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "f8": x.to(torch.float8_e4m3fn),
        "i64": torch.arange(7),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "conv": torch.randn(4, 2, 3, 3, generator=g),
    }


def specs_of(tensors: dict[str, torch.Tensor]) -> list[OutSpec]:
    return [OutSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]


def test_streamed_file_reads_back_in_safetensors(tmp_path: Path):
    tensors = sample_tensors()
    path = write_safetensors(
        tmp_path / "x.safetensors",
        specs_of(tensors),
        iter(tensors.values()),
        {"format": "pt", "note": "hi"},
    )
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype, k
        assert torch.equal(loaded[k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "hi"}
    assert min(s.start for s in read_header(path).specs.values()) % 8 == 0  # header padded


def test_reader_reads_what_safetensors_wrote(tmp_path: Path):
    tensors = sample_tensors()
    save_file(tensors, str(tmp_path / "y.safetensors"), metadata={"a": "b"})
    file = TensorFile(tmp_path / "y.safetensors")
    try:
        assert file.header.metadata == {"a": "b"}
        for k, v in tensors.items():
            got = file.get(k)
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert torch.equal(got.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
    finally:
        file.close()


def test_writer_checks_each_tensor_against_the_header_and_leaves_nothing(tmp_path: Path):
    specs = [OutSpec("a", torch.float16, (2, 2)), OutSpec("b", torch.float16, (3,))]
    out = tmp_path / "z.safetensors"
    with pytest.raises(ValueError, match=r"tensor b: got torch.float32 \(3,\)"):
        write_safetensors(out, specs, iter([torch.zeros(2, 2).half(), torch.zeros(3)]))
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_writer_refuses_too_few_tensors(tmp_path: Path):
    specs = [OutSpec("a", torch.float32, (1,)), OutSpec("b", torch.float32, (1,))]
    with pytest.raises(ValueError):
        write_safetensors(tmp_path / "z.safetensors", specs, iter([torch.zeros(1)]))
    assert list(tmp_path.iterdir()) == []


def test_unreadable_and_truncated_files_are_input_errors(tmp_path: Path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="junk.safetensors is not a readable safetensors"):
        read_header(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(100)}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-40])
    file = TensorFile(tmp_path / "t.safetensors")
    with pytest.raises(InputError, match="truncated: tensor w"):
        file.get("w")
    file.close()


def test_lazy_tensors_defer_reads_through_torch_ops(tmp_path: Path):
    q, k = torch.randn(2, 3), torch.randn(2, 3)
    save_file({"q": q, "k": k}, str(tmp_path / "l.safetensors"))
    file = TensorFile(tmp_path / "l.safetensors")
    reads = []
    get = file.get
    file.get = lambda name, buf=None: reads.append(name) or get(name, buf)  # type: ignore[method-assign]
    lq, lk = Lazy.of(file, "q"), Lazy.of(file, "k")
    fused = torch.cat([lq, lk]).T[..., None]
    assert fused.shape == (3, 4, 1) and fused.dtype == torch.float32 and reads == []
    assert torch.equal(fused.load(), torch.cat([q, k]).T[..., None])
    assert reads == ["q", "k"]
    file.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]},
         "tensor w has 8 bytes, its shape and dtype need 16"),
        ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]},
         "tensor w has dtype C64, not supported"),
    ],
)  # fmt: skip
def test_headers_that_do_not_add_up_are_input_errors(tmp_path: Path, entry: dict, message: str):
    header = json.dumps({"w": entry}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(InputError, match=message):
        read_header(path)
