"""The prompt set: built from a captions frame, deterministic, versioned by its digest."""

from __future__ import annotations

import polars as pl
import pytest

from kohaku.evaluate.prompts import PROMPT_SCHEMA, PROMPT_SET_VERSION, build_prompt_set
from tests.evaluate.conftest import POSTS, captions_frame


def build(frame: pl.DataFrame | None = None, layout: str = "epsilon", **kw):
    args = {"characters": 2, "styles": 1, "quality_probes": True, "references": 2} | kw
    return build_prompt_set(captions_frame() if frame is None else frame, layout, **args)


def test_most_frequent_characters_with_series_count_and_references() -> None:
    prompts = build(characters=3, styles=0, quality_probes=False, references=5)
    assert prompts.frame.schema == pl.Schema(PROMPT_SCHEMA)
    rows = prompts.frame.select("prompt_id", "tag", "series", "references").rows()
    # miku is on 4 posts (one shared with rin: not a reference), rin on 3, reimu on 2;
    # "project diva" is on 1 of miku's 4 posts: not her series
    assert rows == [
        ("character-0000", "hatsune miku", ["vocaloid"], [1, 2, 3]),
        ("character-0001", "kagamine rin", ["vocaloid"], [5, 6]),
        ("character-0002", "hakurei reimu", ["touhou"], [7, 8]),
    ]
    assert prompts.frame["prompt"][0] == "1girl, hatsune miku, vocaloid, masterpiece, safe"


def test_style_and_quality_probes_share_their_content() -> None:
    frame = build(characters=0, styles=2).frame
    assert frame["kind"].to_list() == ["style", "style", "quality", "quality", "quality"]
    # artists: a on 4 posts, b on 2; qualities best first, as the tag stage names them
    assert frame["tag"].to_list() == ["artist a", "artist b", "masterpiece", "best quality",
                                      "worst quality"]  # fmt: skip
    assert frame["prompt"][0] == "1girl, artist a, long hair, solo, bow, scenery, masterpiece, safe"
    assert frame["prompt"][3] == "1girl, long hair, solo, bow, scenery, best quality, safe"


@pytest.mark.parametrize(
    ("layout", "first"),
    [
        ("epsilon", "1girl, hatsune miku, vocaloid, masterpiece, safe"),
        ("delta", "1girl, hatsune miku, vocaloid, masterpiece, safe"),
        ("hakubooru", "1girl, hatsune miku, vocaloid, |||safe, masterpiece"),
    ],
)
def test_prompts_follow_the_run_layout(layout: str, first: str) -> None:
    frame = build(layout=layout).frame
    assert frame["prompt"][0] == first
    assert "|||" not in frame["text"][0]  # the CLIP text drops the keep separator


def test_deterministic_whatever_the_row_order_and_versioned() -> None:
    a = build()
    shuffled = captions_frame().sample(fraction=1.0, shuffle=True, seed=3)
    b = build(shuffled)
    assert a.frame.equals(b.frame) and a.digest == b.digest
    assert a.version == PROMPT_SET_VERSION and len(a.digest) == 16
    assert build(layout="delta").digest != a.digest  # same prompts, another layout
    assert build(characters=1).digest != a.digest


def test_references_only_among_downloaded_pictures() -> None:
    frame = build(image_ids=[2, 6, 9]).frame
    assert frame["references"].to_list()[:2] == [[2], [6]]
    assert build(references=0).frame["references"].to_list()[:2] == [[], []]


def test_a_dataset_without_character_artist_or_quality_tags() -> None:
    bare = captions_frame([(1, [], [], [], [], ["scenery"], None, ["safe"])])
    assert build(bare).frame.is_empty()
    only_quality = captions_frame([(1, [], [], [], [], [], "normal quality", [])])
    prompts = build(only_quality).frame
    assert prompts["prompt"].to_list() == ["normal quality"]


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown caption layout"):
        build(layout="nope")


def test_ties_are_broken_by_name() -> None:
    posts = [(i, ["1girl"], [name], [], [], [], None, ["safe"])
             for i, name in enumerate(["zed", "amy", "kai"], 1)]  # fmt: skip
    frame = build(captions_frame(posts), characters=3).frame
    assert frame["tag"].to_list() == ["amy", "kai", "zed"]
    assert len(POSTS) == 10
