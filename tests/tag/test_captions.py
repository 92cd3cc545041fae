"""Caption building: tag text rules, tag groups, date and rating tags, and the exact
caption strings of each layout on hand-made sample-stage files."""

from __future__ import annotations

import polars as pl
import pytest

from kohaku.tag.captions import (
    date_tag_expr,
    group_tags,
    lay_out,
    rating_tags_expr,
    tag_dictionary,
    tag_text,
)
from kohaku.tag.config import TagConfig
from kohaku.tag.run import build_captions
from tests.tag.stage_files import write_sample_stage

GENERAL, ARTIST, CHARACTER, COPYRIGHT, META = range(5)


def text(name: str, **cfg) -> str:
    frame = pl.DataFrame({"name": [name]})
    return frame.select(tag_text(pl.col("name"), TagConfig(**cfg)))["name"][0]


@pytest.mark.parametrize(
    "name, cfg, expected",
    [
        ("long_hair", {}, "long hair"),
        ("looking_at_viewer", {}, "looking at viewer"),
        ("^_^", {}, "^_^"),
        (">_<", {}, ">_<"),
        ("o_o", {}, "o_o"),
        ("_", {}, "_"),
        ("x_x_", {}, "x x "),  # 4 characters: not an emoticon
        ("ó_ó", {}, "ó_ó"),  # 3 characters (5 bytes) is still short
        ("ナ_ナ_ナ", {}, "ナ ナ ナ"),
        ("ask_(askzy)", {}, "ask (askzy)"),
        ("ask_(askzy)", {"escape_brackets": True}, r"ask \(askzy\)"),
        ("fate_(series)", {"escape_brackets": True}, r"fate \(series\)"),
        ("long_hair", {"underscores_to_spaces": False}, "long_hair"),
        (
            "ask_(askzy)",
            {"underscores_to_spaces": False, "escape_brackets": True},
            r"ask_\(askzy\)",
        ),
        ("^_^", {"short_tag_max_len": 0}, "^ ^"),
        ("o_o", {"short_tag_max_len": 2}, "o o"),
        ("long_hair", {"short_tag_max_len": 9}, "long_hair"),
        ("(o)", {"escape_brackets": True}, r"\(o\)"),
        ("1girl", {}, "1girl"),
    ],
)
def test_tag_text(name: str, cfg: dict, expected: str) -> None:
    assert text(name, **cfg) == expected


TAGS = pl.DataFrame(
    [
        (1, "1girl", GENERAL),
        (2, "long_hair", GENERAL),
        (3, "no_humans", GENERAL),
        (4, "1boy", COPYRIGHT),  # a count name outside the general category
        (5, "hatsune_miku", CHARACTER),
        (6, "vocaloid", COPYRIGHT),
        (7, "ask_(askzy)", ARTIST),
        (8, "banned_artist", ARTIST),
        (9, "highres", META),
        (10, "absurdres", META),
        (11, "commentary_request", META),
        (12, "bad_id", META),
        (13, "translated", META),
        (14, "photoshop_(medium)", META),
        (15, "check_translation", META),
        (16, "md5_mismatch", META),
        (17, "", GENERAL),
        (18, "   ", GENERAL),
        (19, None, GENERAL),
        (20, "mystery", 9),  # unknown category
        (21, "banned_artist", META),  # a meta tag: not an artist tag
        (22, "multiple_girls", GENERAL),
    ],
    schema={"id": pl.Int64, "name": pl.String, "category": pl.Int32},
    orient="row",
)


def groups(cfg: TagConfig) -> dict[int, str]:
    d = tag_dictionary(TAGS, cfg)
    assert {"tag_id", "group", "text", "name"} <= set(d.columns)
    assert d["tag_id"].is_unique().all()
    return dict(zip(d["tag_id"], d["group"], strict=True))


def test_tag_dictionary_groups() -> None:
    assert groups(TagConfig()) == {
        1: "count",
        2: "general",
        3: "count",
        4: "copyright",
        5: "character",
        6: "copyright",
        7: "artist",
        9: "meta",
        10: "meta",
        21: "meta",
        22: "count",
    }


def test_tag_dictionary_text() -> None:
    d = tag_dictionary(TAGS, TagConfig(escape_brackets=True))
    assert dict(zip(d["tag_id"], d["text"], strict=True))[7] == r"ask \(askzy\)"
    assert dict(zip(d["tag_id"], d["name"], strict=True))[7] == "ask_(askzy)"


def test_hakubooru_count_tags_exclude_no_humans() -> None:
    g = groups(TagConfig(layout="hakubooru"))
    assert g[3] == "general" and g[1] == "count" and g[22] == "count"


def test_custom_keywords() -> None:
    g = groups(
        TagConfig(count_tags=["long_hair"], meta_drop_keywords=["res"], artist_drop_keywords=[])
    )
    assert g[1] == "general" and g[2] == "count"
    assert 9 not in g and 10 not in g  # highres, absurdres dropped
    assert g[11] == g[12] == g[13] == "meta"
    assert g[8] == "artist"


def test_dropped_meta_tags_by_substring() -> None:
    kept = set(groups(TagConfig()))
    for tid in (11, 12, 13, 14, 15, 16):  # commentary, bad, translat, (medium), mismatch
        assert tid not in kept


@pytest.mark.parametrize(
    "year, tag",
    [
        (2004, None),
        (2005, "old"),
        (2010, "old"),
        (2011, "early"),
        (2014, "early"),
        (2015, "mid"),
        (2017, "mid"),
        (2018, "recent"),
        (2020, "recent"),
        (2021, "newest"),
        (2024, "newest"),
        (2031, "newest"),
        (None, None),
    ],
)
def test_date_tags_by_year(year: int | None, tag: str | None) -> None:
    frame = pl.DataFrame({"year": [year]}, schema={"year": pl.Int32})
    assert frame.select(date=date_tag_expr(TagConfig()))["date"][0] == tag


def test_custom_and_empty_date_tags() -> None:
    frame = pl.DataFrame({"year": [1999, 2000, 2001]})
    spans = [{"first_year": 2000, "last_year": 2000, "tag": "y2k"}]
    got = frame.with_columns(d=date_tag_expr(TagConfig(date_tags=spans)))["d"].to_list()
    assert got == [None, "y2k", None]
    got = frame.with_columns(d=date_tag_expr(TagConfig(date_tags=[])))["d"].to_list()
    assert got == [None, None, None]


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("epsilon", [["safe"], ["sensitive"], ["nsfw"], ["nsfw", "explicit"], []]),
        ("delta", [["safe"], ["sensitive"], ["nsfw"], ["nsfw", "explicit"], []]),
        ("hakubooru", [["safe"], ["sensitive"], ["nsfw"], ["explicit", "nsfw"], []]),
    ],
)
def test_rating_tags(layout: str, expected: list[list[str]]) -> None:
    frame = pl.DataFrame({"rating": [0, 1, 2, 3, None]}, schema={"rating": pl.Int32})
    got = frame.select(r=rating_tags_expr(TagConfig(layout=layout)))["r"].to_list()
    assert got == expected


def test_custom_rating_tags() -> None:
    cfg = TagConfig(rating_tags={"general": ["general"], "explicit": []})
    frame = pl.DataFrame({"rating": [0, 1, 3]}, schema={"rating": pl.Int32})
    assert frame.select(r=rating_tags_expr(cfg))["r"].to_list() == [["general"], [], []]


def test_group_tags_keeps_relation_order_or_sorts_by_name() -> None:
    d = tag_dictionary(TAGS, TagConfig())
    rows = pl.LazyFrame(
        {"post_id": [7, 7, 7, 7, 8], "tag_id": [9, 2, 1, 10, 8], "ord": [1, 2, 3, 4, 5]}
    )
    got = group_tags(rows, d, "relation").collect().sort("id")
    assert got.columns == ["id", "count", "character", "copyright", "artist", "general", "meta"]
    assert got.row(0, named=True) == {
        "id": 7,
        "count": ["1girl"],
        "character": [],
        "copyright": [],
        "artist": [],
        "general": ["long hair"],
        "meta": ["highres", "absurdres"],
    }
    assert got["id"].to_list() == [7]  # post 8 has only a dropped tag
    by_name = group_tags(rows, d, "name").collect()
    assert by_name["meta"][0].to_list() == ["absurdres", "highres"]


# --- whole captions on hand-made sample-stage files ----------------------------------------

STAGE_TAGS = [
    (1, "1girl", GENERAL),
    (2, "long_hair", GENERAL),
    (3, "^_^", GENERAL),
    (4, "hatsune_miku", CHARACTER),
    (5, "vocaloid", COPYRIGHT),
    (6, "ask_(askzy)", ARTIST),
    (7, "banned_artist", ARTIST),
    (8, "highres", META),
    (9, "commentary_request", META),
    (10, "solo", GENERAL),
    (11, "no_humans", GENERAL),
    (12, "translated", META),
    (13, "bad_id", META),
    (14, "", GENERAL),
    (15, "scenery", GENERAL),
]
STAGE_POSTS = [
    {"id": 1, "created_at": "2023-03-17T03:50:48.762-04:00", "rating": 3, "fav_count": 500},
    {"id": 2, "created_at": "2008-07-01T10:00:00.000-04:00", "rating": 0, "fav_count": 0},
    {"id": 3, "created_at": "2016-02-01T10:00:00.000-05:00", "rating": 1, "fav_count": 45},
    {"id": 4, "created_at": "2019-12-31T23:30:00.000-05:00", "rating": 2, "fav_count": 10},
]
STAGE_RELATIONS = [  # (post, tag) in relation order
    (1, 10),
    (1, 2),
    (1, 1),
    (1, 4),
    (1, 5),
    (1, 6),
    (1, 7),
    (1, 8),
    (1, 9),
    (1, 3),
    (1, 12),
    (1, 13),
    (1, 14),
    (2, 11),
    (2, 15),
    (4, 1),
]
TABLE = {r: [100, 50, 40, 30, 20, 10] for r in ("general", "sensitive", "questionable", "explicit")}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("run")
    manifest = write_sample_stage(run_dir, STAGE_POSTS, STAGE_TAGS, STAGE_RELATIONS)
    return run_dir / "sample", manifest


def captions(sample_dir, **cfg) -> pl.DataFrame:
    cfg = TagConfig(**{"quality": {"table": TABLE}, **cfg})
    return build_captions(cfg, *sample_dir).collect()


def laid_out(sample_dir, layout: str = "epsilon", **cfg) -> pl.DataFrame:
    """The stage's output with the layout's head/body/tail derived by `lay_out`."""
    frame = captions(sample_dir, layout=layout, **cfg)
    return lay_out(frame.lazy(), layout).collect()


EXPECTED = {
    "epsilon": [
        "1girl, hatsune miku, vocaloid, ask (askzy), solo, long hair, ^_^, masterpiece, "
        "newest, highres, nsfw, explicit",
        "no humans, scenery, worst quality, old, safe",
        "great quality, mid, sensitive",
        "1girl, worst quality, recent, nsfw",
    ],
    "delta": [
        "1girl, hatsune miku, vocaloid, ask (askzy), masterpiece, nsfw, explicit, newest, "
        "solo, long hair, ^_^, highres",
        "no humans, worst quality, safe, old, scenery",
        "great quality, sensitive, mid",
        "1girl, worst quality, nsfw, recent",
    ],
    "hakubooru": [
        "1girl, hatsune miku, vocaloid, ask (askzy), |||solo, long hair, ^_^, highres, "
        "newest, explicit, nsfw, masterpiece",
        ", |||no humans, scenery, old, safe, worst quality",
        ", |||mid, sensitive, great quality",
        "1girl, |||recent, nsfw, worst quality",
    ],
}


@pytest.mark.parametrize("layout", list(EXPECTED))
def test_caption_strings(sample_dir, layout: str) -> None:
    got = captions(sample_dir, layout=layout)
    assert got["id"].to_list() == [1, 2, 3, 4]
    assert got["caption"].to_list() == EXPECTED[layout]


@pytest.mark.parametrize(
    "layout, head, body, tail",
    [
        (
            "epsilon",
            ["1girl", "hatsune miku", "vocaloid", "ask (askzy)"],
            ["solo", "long hair", "^_^"],
            ["masterpiece", "newest", "highres", "nsfw", "explicit"],
        ),
        (
            "delta",
            [
                "1girl",
                "hatsune miku",
                "vocaloid",
                "ask (askzy)",
                "masterpiece",
                "nsfw",
                "explicit",
                "newest",
            ],
            ["solo", "long hair", "^_^", "highres"],
            [],
        ),
        (
            "hakubooru",
            ["1girl", "hatsune miku", "vocaloid", "ask (askzy)"],
            ["solo", "long hair", "^_^", "highres"],
            ["newest", "explicit", "nsfw", "masterpiece"],
        ),
    ],
)
def test_head_body_tail(sample_dir, layout: str, head, body, tail) -> None:
    row = laid_out(sample_dir, layout=layout).row(0, named=True)
    assert (row["head"], row["body"], row["tail"]) == (head, body, tail)
    assert row["count"] == ["1girl"] and row["character"] == ["hatsune miku"]
    assert row["copyright"] == ["vocaloid"] and row["artist"] == ["ask (askzy)"]
    assert row["general"] == ["solo", "long hair", "^_^"] and row["meta"] == ["highres"]
    assert row["quality"] == "masterpiece" and row["date"] == "newest"


@pytest.mark.parametrize("layout", list(EXPECTED))
def test_stage_caption_equals_the_laid_out_lists(sample_dir, layout: str) -> None:
    """The stage builds captions group by group as strings; `lay_out` (what the trainer
    uses) builds them from lists: the two agree, separators and empty groups included."""
    frame = laid_out(sample_dir, layout=layout)
    stage_caption = captions(sample_dir, layout=layout)["caption"]
    assert frame["caption"].to_list() == stage_caption.to_list()


def test_posts_without_tags_get_empty_groups(sample_dir) -> None:
    row = laid_out(sample_dir).row(2, named=True)
    assert row["id"] == 3
    for group in ("count", "character", "copyright", "artist", "general", "meta"):
        assert row[group] == []
    assert (row["head"], row["body"]) == ([], [])
    assert row["tail"] == ["great quality", "mid", "sensitive"]


def test_tag_order_by_name(sample_dir) -> None:
    got = captions(sample_dir, tag_order="name")
    assert got["general"][0].to_list() == ["^_^", "long hair", "solo"]
    assert got["caption"][0] == (
        "1girl, hatsune miku, vocaloid, ask (askzy), ^_^, long hair, solo, masterpiece, "
        "newest, highres, nsfw, explicit"
    )


def test_escaped_brackets_and_raw_underscores(sample_dir) -> None:
    got = captions(sample_dir, escape_brackets=True, underscores_to_spaces=False)
    assert got["caption"][0] == (
        r"1girl, hatsune_miku, vocaloid, ask_\(askzy\), solo, long_hair, ^_^, masterpiece, "
        "newest, highres, nsfw, explicit"
    )


def test_quality_disabled(sample_dir) -> None:
    got = build_captions(TagConfig(quality={"enabled": False}), *sample_dir).collect()
    assert got["quality"].null_count() == 4
    assert got["caption"][3] == "1girl, recent, nsfw"


def test_upload_year_is_the_local_danbooru_date(sample_dir) -> None:
    """Post 4 was uploaded on 2019-12-31 US-Eastern (2020 in UTC): the date tag follows
    danbooru's own date."""
    assert captions(sample_dir)["date"][3] == "recent"


def test_lay_out_on_an_inline_frame() -> None:
    frame = pl.LazyFrame(
        {
            "count": [["1girl"]],
            "character": [[]],
            "copyright": [["original"]],
            "artist": [[]],
            "general": [["smile", "solo"]],
            "meta": [[]],
            "quality": [None],
            "date": ["mid"],
            "rating_tags": [["safe"]],
        },
        schema={
            "count": pl.List(pl.String),
            "character": pl.List(pl.String),
            "copyright": pl.List(pl.String),
            "artist": pl.List(pl.String),
            "general": pl.List(pl.String),
            "meta": pl.List(pl.String),
            "quality": pl.String,
            "date": pl.String,
            "rating_tags": pl.List(pl.String),
        },
    )
    got = {layout: lay_out(frame, layout).collect()["caption"][0] for layout in EXPECTED}
    assert got == {
        "epsilon": "1girl, original, smile, solo, mid, safe",
        "delta": "1girl, original, safe, mid, smile, solo",
        "hakubooru": "1girl, original, |||smile, solo, mid, safe",
    }
