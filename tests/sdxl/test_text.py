"""Text conditioning over chunks of 75 tokens (kohaku.sdxl.text) on the tiny SDXL: prompts
of 75 tokens or fewer encode exactly as the 77-token path did, longer ones take chunks, each
with its own start and end token; the pooled embedding comes from the first chunk."""

from __future__ import annotations

import pydantic
import pytest
import torch

from kohaku.evaluate.config import EvaluateConfig
from kohaku.sdxl import text
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.train import objective
from kohaku.train.config import CaptionConfig, TrainConfig

CPU = torch.device("cpu")


def words(n: int) -> str:
    """n tokens of the tiny BPE: each lone "a" is one token (`a</w>`)."""
    return " ".join(["a"] * n)


@pytest.fixture(scope="module")
def parts():
    return tiny_sdxl_components()


def old_encoding(parts, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning before issue 12: each caption truncated to 77 tokens, one pass."""

    def ids(tokenizer):
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids  # fmt: skip

    out1 = parts.text_encoder(ids(parts.tokenizer), output_hidden_states=True)
    out2 = parts.text_encoder_2(ids(parts.tokenizer_2), output_hidden_states=True)
    return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2.text_embeds


@torch.no_grad()
def test_prompts_of_75_tokens_or_fewer_encode_exactly_as_before(parts) -> None:
    captions = ["1girl, hatsune miku, smile", words(75), ""]
    cond = objective.encode_prompts(parts, captions, torch.zeros(3, 6))
    hidden, pooled = old_encoding(parts, captions)
    assert cond.hidden.shape == (3, 77, 80)
    assert torch.equal(cond.hidden, hidden) and torch.equal(cond.pooled, pooled)


def test_chunks_carry_their_own_start_end_and_pad_tokens(parts) -> None:
    for tokenizer in (parts.tokenizer, parts.tokenizer_2):
        bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        ids = text.token_ids(tokenizer, [words(100), "a"], 225)
        assert [len(i) for i in ids.ids] == [100, 1] and ids.truncated == 0
        chunks = text.chunk_ids(tokenizer, ids.ids, text.chunks_needed(ids.ids))
        a = ids.ids[1][0]
        assert chunks.tolist() == [
            [bos, *[a] * 75, eos],  # the long caption: 75 tokens, then 25
            [bos, *[a] * 25, eos, *[pad] * 50],
            [bos, a, eos, *[pad] * 74],  # the short one, and its empty second chunk
            [bos, eos, *[pad] * 75],
        ]
    assert parts.tokenizer.pad_token_id == parts.tokenizer.eos_token_id  # SDXL: <|endoftext|>
    assert parts.tokenizer_2.pad_token_id != parts.tokenizer_2.eos_token_id  # SDXL: "!"


@torch.no_grad()
def test_a_long_caption_takes_two_chunks_and_pools_the_first(parts) -> None:
    """[B, 154, ...] for a batch whose longest caption has 76-150 tokens: the first chunk is
    what the 77-token path gave (it cut there), the second encodes the rest on its own."""
    captions = [words(70) + ", 1girl, smile, long hair", "1girl"]
    cond = objective.encode_prompts(parts, captions, torch.zeros(2, 6))
    assert cond.hidden.shape == (2, 154, 80) and cond.pooled.shape == (2, 32)
    hidden, pooled = old_encoding(parts, captions)
    torch.testing.assert_close(cond.hidden[:, :77], hidden)
    torch.testing.assert_close(cond.pooled, pooled)  # TE2's pooled of the first chunk
    rest = text.token_ids(parts.tokenizer, captions[:1], 225).ids[0][75:]
    alone = objective.encode_prompts(parts, [parts.tokenizer.decode(rest)], torch.zeros(1, 6))
    torch.testing.assert_close(cond.hidden[0, 77:], alone.hidden[0])
    empty = objective.encode_prompts(parts, [""], torch.zeros(1, 6))
    torch.testing.assert_close(cond.hidden[1, 77:], empty.hidden[0])  # start, end, pad...


@torch.no_grad()
def test_max_tokens_bounds_the_chunks(parts) -> None:
    out = text.encode_text(parts, [words(300), "1girl"], 225, CPU)
    assert out.hidden.shape == (2, 231, 80) and out.truncated == 1
    out = text.encode_text(parts, [words(300)], 75, CPU)
    assert out.hidden.shape == (1, 77, 80) and out.truncated == 1


def test_gradients_reach_the_text_encoders_through_every_chunk(parts) -> None:
    cond = objective.encode_prompts(parts, [words(120)], torch.zeros(1, 6))
    cond.hidden[:, 77:].sum().backward()
    grad = parts.text_encoder.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    parts.text_encoder.zero_grad(set_to_none=True)
    parts.text_encoder_2.zero_grad(set_to_none=True)


@torch.no_grad()
def test_300_tokens_take_four_chunks_and_675_nine(parts) -> None:
    """Kohaku XL Zeta's 300: [B, 77 * 4, ...], every chunk its own start and end; a text
    over the maximum is cut there; up to the ceiling of 675 (9 chunks)."""
    captions = [words(290) + ", 1girl", "1girl"]
    out = text.encode_text(parts, captions, 300, CPU)
    assert out.hidden.shape == (2, 77 * 4, 80) and out.pooled.shape == (2, 32)
    assert out.truncated == 0
    first = text.encode_text(parts, [words(75)], 75, CPU)
    torch.testing.assert_close(out.hidden[0, :77], first.hidden[0])  # the first 75 tokens
    cond = objective.encode_prompts(parts, captions, torch.zeros(2, 6), max_tokens=300)
    torch.testing.assert_close(cond.hidden, out.hidden)
    over = text.encode_text(parts, [words(700)], 675, CPU)
    assert over.hidden.shape == (1, 77 * 9, 80) and over.truncated == 1


@pytest.mark.parametrize("value", [0, 100, 301, 750, -75])
def test_max_tokens_must_be_a_multiple_of_75_up_to_675(value: int) -> None:
    """Issue 14 raised the ceiling from 225 to 675: 300 (Zeta) and 675 are valid now."""
    allowed = ", ".join(str(n) for n in range(75, 676, 75))
    message = f"max_tokens {value} must be a positive multiple of 75 up to 675 \\({allowed}\\)"
    with pytest.raises(pydantic.ValidationError, match=message):
        CaptionConfig(max_tokens=value)
    with pytest.raises(pydantic.ValidationError, match=message):
        EvaluateConfig(max_tokens=value)
    cfg = TrainConfig.model_validate({"model": {"path": "m"}, "captions": {"max_tokens": 300}})
    assert cfg.captions.max_tokens == 300 and CaptionConfig().max_tokens == 225
    assert EvaluateConfig(max_tokens=675).max_tokens == 675
    assert EvaluateConfig().max_tokens == 225
