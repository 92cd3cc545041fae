"""Captions and prompts to SDXL's text conditioning over more than 77 tokens, for training
(`kohaku.train.objective`) and sampling (`kohaku.evaluate.generate`) alike.

Reads and writes nothing. A text's tokens (without start and end token) are cut into chunks
of 75; each chunk gets its own start and end token and is padded to 77 with its tokenizer's
pad token (SDXL's tokenizer pads with `<|endoftext|>`, tokenizer_2 with `!`); every chunk
goes through both text encoders (penultimate hidden states, side by side) and the chunks are
concatenated along the sequence: [B, 77 * chunks, TE1 + TE2 width]. The pooled embedding is
TE2's of the first chunk. A batch gets as many chunks as its longest text needs; shorter
texts get empty chunks (start, end, pad...). This is how A1111 (`sd_hijack_clip.py`) and
ComfyUI (`sd1_clip.py`) sample and how kohya sd-scripts trains with `--max_token_length`
(kohya keeps only the first start and the last end token: 75 * chunks + 2 positions; the
UNet's cross-attention takes either length). A text of 75 tokens or fewer gives exactly
the single 77-token encoding of diffusers' SDXL pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kohaku.train.config import CHUNK_TOKENS

CONTEXT = CHUNK_TOKENS + 2  # CLIP's 77 positions: start token, 75 tokens, end token


@dataclass
class TextEmbeds:
    hidden: torch.Tensor  # [B, 77 * chunks, TE1 hidden + TE2 hidden]
    pooled: torch.Tensor  # [B, TE2 projection], from the first chunk
    truncated: int  # texts longer than max_tokens, cut at max_tokens tokens


@dataclass(frozen=True)
class TokenIds:
    ids: list[list[int]]  # each text's tokens, no start or end token, at most max_tokens
    truncated: int


def token_ids(tokenizer, texts: list[str], max_tokens: int) -> TokenIds:
    """The texts' tokens cut at `max_tokens` (verbose off: no warning past 77 tokens)."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False).input_ids
    return TokenIds([i[:max_tokens] for i in ids], sum(len(i) > max_tokens for i in ids))


def chunks_needed(*batches: list[list[int]]) -> int:
    """Chunks of 75 for the longest text; at least one (an empty text is one chunk)."""
    longest = max((len(i) for ids in batches for i in ids), default=0)
    return max(1, math.ceil(longest / CHUNK_TOKENS))


def chunk_ids(tokenizer, ids: list[list[int]], chunks: int) -> torch.Tensor:
    """int64 [B * chunks, 77]: text b's chunk c at row b * chunks + c, each
    `start, <= 75 tokens, end, pad...`; the texts must fit `chunks`."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    rows = []
    for text in ids:
        if len(text) > chunks * CHUNK_TOKENS:
            raise ValueError(f"{len(text)} tokens do not fit {chunks} chunks of {CHUNK_TOKENS}")
        for c in range(chunks):
            part = text[c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS]
            rows.append([bos, *part, eos] + [pad] * (CHUNK_TOKENS - len(part)))
    return torch.tensor(rows, dtype=torch.int64)


def encode_text(parts, texts: list[str], max_tokens: int, device: torch.device) -> TextEmbeds:
    """SDXL text conditioning of `texts` (gradients flow when the encoders train)."""
    first = token_ids(parts.tokenizer, texts, max_tokens)
    second = token_ids(parts.tokenizer_2, texts, max_tokens)
    chunks = chunks_needed(first.ids, second.ids)
    out1 = parts.text_encoder(chunk_ids(parts.tokenizer, first.ids, chunks).to(device),
                              output_hidden_states=True)  # fmt: skip
    out2 = parts.text_encoder_2(chunk_ids(parts.tokenizer_2, second.ids, chunks).to(device),
                                output_hidden_states=True)  # fmt: skip
    batch = len(texts)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    pooled = out2.text_embeds.unflatten(0, (batch, chunks))[:, 0]
    return TextEmbeds(hidden.reshape(batch, chunks * CONTEXT, -1), pooled,
                      max(first.truncated, second.truncated))  # fmt: skip
