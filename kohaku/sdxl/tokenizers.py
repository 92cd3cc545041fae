"""SDXL's two CLIP tokenizers, built offline from the BPE merges shipped in the package.

Reads `kohaku/data/bpe_simple_vocab_16e6.txt.gz` (CLIP's byte-level BPE merges, MIT licence,
from the `open_clip_torch` wheel; see `kohaku/data/SOURCES.md`). Writes nothing that
outlives a call: the vocabulary and merges are written to a temporary folder and read back
by transformers' `CLIPTokenizer`, the one input every transformers version accepts.

CLIP's vocabulary follows from the merges alone (openai/CLIP `simple_tokenizer.py`): the 256
byte characters, the same with `</w>`, the first 49152-256-2 merges joined, then
`<|startoftext|>` and `<|endoftext|>`: 49,408 ids. SDXL's two tokenizers differ only in the
pad token: text encoder 1 pads with `<|endoftext|>`, text encoder 2 with `!` (id 0).
Text is cleaned as transformers' CLIPTokenizer does (NFC, whitespace, lower case), not with
OpenCLIP's ftfy and HTML unescaping: the same ids for prompts without mojibake or entities.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import cache
from pathlib import Path

BPE_FILE = Path(__file__).parents[1] / "data" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 49,408 ids with the specials
MAX_LENGTH = 77
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def byte_unicode_chars() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for the bytes, in CLIP's vocab
    order: the printable bytes as themselves first (`!` is id 0), then the other bytes,
    each mapped to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def bpe_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's vocab layout: bytes, bytes + `</w>`, each merge's result, then the specials."""
    chars = byte_unicode_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges)]
    return {token: i for i, token in enumerate([*tokens, *SPECIALS])}


@cache
def clip_merges() -> tuple[str, ...]:
    """CLIP's merges ("a b" strings) from the packaged BPE file (its first line is a header)."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    return tuple(lines[1 : CLIP_MERGES + 1])


def write_tokenizer(out_dir: Path, vocab: dict[str, int], merges: list[str], pad_token: str,
                    max_length: int = MAX_LENGTH) -> Path:  # fmt: skip
    """vocab.json, merges.txt and the configs of a CLIPTokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "unk_token": SPECIALS[1],
               "pad_token": pad_token}  # fmt: skip
    config = {**special, "model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out_dir


def read_tokenizer(vocab: dict[str, int], merges: list[str], pad_token: str,
                   max_length: int = MAX_LENGTH):  # fmt: skip
    """A transformers CLIPTokenizer, through files (what every transformers version reads)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tokenizer(Path(tmp), vocab, merges, pad_token, max_length)
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def sdxl_tokenizers():
    """SDXL's (tokenizer, tokenizer_2) with CLIP's vocabulary, from the packaged merges.

    tokenizer_2 pads with id 0 (`!`) as OpenCLIP and the SGM code did, but `!` in a caption
    stays the BPE token `!</w>` (256), as in OpenCLIP, kohya and ComfyUI: registering `!` as
    the pad token (diffusers' tokenizer_2 folder) would make every `!` of a caption a
    special token (id 0)."""
    merges = list(clip_merges())
    vocab = bpe_vocab(merges)
    one = read_tokenizer(vocab, merges, SPECIALS[1])
    two = read_tokenizer(vocab, merges, SPECIALS[1])
    two.pad_token_id = vocab["!"]
    return one, two


# the tokenizers in a single file's metadata: "clip" for SDXL's own, else vocab and merges


def tokenizer_spec(tokenizer) -> str | dict:
    """How a kohaku single file records a tokenizer: `"clip"` when it is CLIP's (the
    vocabulary and merges of the packaged BPE file), else its vocab, merges and pad token."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = tokenizer.get_vocab()
    if len(vocab) == len(bpe_vocab([])) + CLIP_MERGES and tuple(merges) == clip_merges():
        return "clip"
    return {"vocab": vocab, "merges": merges, "pad_token": tokenizer.pad_token,
            "max_length": tokenizer.model_max_length}  # fmt: skip


def tokenizers_from_spec(specs: list[str | dict]):
    """(tokenizer, tokenizer_2) from two `tokenizer_spec` records."""
    if specs == ["clip", "clip"]:
        return sdxl_tokenizers()
    if "clip" in specs:
        raise ValueError("a file records one CLIP tokenizer and one of its own")
    return tuple(read_tokenizer(s["vocab"], s["merges"], s["pad_token"], s["max_length"])
                 for s in specs)  # fmt: skip
