"""kohaku.sdxl.tokenizers: SDXL's two CLIP tokenizers built offline from the packaged BPE
merges give CLIP's token ids. The expected ids were computed by the reference algorithm
(open_clip 3.3.0 `SimpleTokenizer.encode`, the same BPE file); "a photo of a cat" is the
id sequence every CLIP tutorial shows."""

from __future__ import annotations

import pytest

from kohaku.sdxl.tokenizers import sdxl_tokenizers, tokenizer_spec, tokenizers_from_spec

SOT, EOT = 49406, 49407
KNOWN = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "1girl, solo, long hair, masterpiece, best quality":
        [272, 1611, 267, 5797, 267, 1538, 2225, 267, 12066, 267, 949, 3027],
    "Hatsune Miku (vocaloid), absurdres!":
        [3447, 41096, 37703, 263, 34037, 14758, 2361, 21639, 44697, 256],
    "café naïve 日本語 ★": [15304, 1097, 35689, 563, 39121, 44353, 34002, 508, 10643],
    "don't stop_believing 2024": [847, 713, 1691, 318, 19551, 273, 271, 273, 275],
    "k-on!, !?, >_<, :3": [330, 268, 525, 29325, 0, 41628, 44144, 27, 267, 281, 274],
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers():
    return sdxl_tokenizers()


@pytest.mark.parametrize("prompt", list(KNOWN))
def test_both_tokenizers_give_clips_ids(tokenizers, prompt):
    for tokenizer in tokenizers:
        assert tokenizer(prompt).input_ids == [SOT, *KNOWN[prompt], EOT]


def test_vocabulary_padding_and_length(tokenizers):
    one, two = tokenizers
    assert len(one) == len(two) == 49408 and one.model_max_length == two.model_max_length == 77
    assert one.convert_ids_to_tokens([0, 255, 256, 49405]) == ["!", "Ń", "!</w>", "jekyll</w>"]
    # TE1 pads with <|endoftext|>, TE2 with "!" (id 0), as SDXL was trained
    assert one("cat", padding="max_length").input_ids[:5] == [SOT, 2368, EOT, EOT, EOT]
    assert two("cat", padding="max_length").input_ids[:5] == [SOT, 2368, EOT, 0, 0]
    assert len(two("cat", padding="max_length").input_ids) == 77


def test_a_file_records_clips_tokenizers_by_name(tokenizers):
    specs = [tokenizer_spec(t) for t in tokenizers]
    assert specs == ["clip", "clip"]
    one, two = tokenizers_from_spec(specs)
    assert two("a photo of a cat", padding="max_length").input_ids[:8] == [
        SOT, 320, 1125, 539, 320, 2368, EOT, 0]  # fmt: skip
