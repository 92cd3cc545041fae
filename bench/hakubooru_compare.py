"""Benchmark and check kohaku's `hakubooru` caption layout against HakuBooru 0.0.3 itself.

    bash bench/setup_hakubooru.sh                      # once: bench/.venv-hakubooru
    .venv/bin/python bench/hakubooru_compare.py --db bench/out/synth-200000-s0.db
    .venv/bin/python bench/hakubooru_compare.py --ranges '[{"start": 0, "count": 20000}]'

Reads the danbooru2023 SQLite file (generated with `kohaku.demo.synth` when missing).
Runs bench/hakubooru_side.py in bench/.venv-hakubooru (peewee selection + KohakuCaptioner),
then `kohaku build-dataset` on the same file with layout "hakubooru", HakuBooru's
fav_count table at its quality_tag_new percentiles and max_post_id 7,100,000.
Writes under `--work` (default bench/out/hakubooru-compare/): hb/captions.jsonl,
hb/fav_count_percentile_full.json, kohaku.toml, run/ (the kohaku run dir, fresh), and
summary.json; prints the same JSON summary: timings of both sides, speedup, posts each
side and in common, exact caption match rate, mismatch categories with 3 examples each,
and why the selections differ. Uses the stdlib and polars only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl

BENCH = Path(__file__).resolve().parent
HB_PYTHON = BENCH / ".venv-hakubooru" / "bin" / "python"
KOHAKU = Path(sys.executable).with_name("kohaku")
PERCENTILES = [90, 75, 60, 45, 30, 10]  # HakuBooru's quality_tag_new levels
QUALITY = {"masterpiece", "best quality", "great quality", "good quality", "normal quality",
           "low quality", "worst quality"}  # fmt: skip
YEAR = {"old", "early", "mid", "recent", "newest"}
RATING = {"safe", "sensitive", "nsfw", "explicit"}
ALL = '[{"start": 0, "end": null, "count": "all"}]'
# HakuBooru's year_tag exactly: years before 2005 are "early", none after 2024
HB_DATES = [(2005, 2010, "old"), (-9999, 2014, "early"), (2015, 2017, "mid"),
            (2018, 2020, "recent"), (2021, 2024, "newest")]  # fmt: skip


def ensure_db(path: Path, posts: int) -> Path:
    if not path.exists():
        from kohaku.demo.synth import generate_danbooru_db

        print(f"generating {posts} posts into {path}", file=sys.stderr)
        generate_danbooru_db(path, posts, seed=0)
    return path


def _run(cmd: list[str]) -> tuple[str, float]:
    """Run a child process; (stdout, wall seconds). On failure show its stderr and stop."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout, time.perf_counter() - t0


def run_hakubooru(db: Path, work: Path, ranges: str, seed: int) -> dict:
    if not HB_PYTHON.exists():
        sys.exit(f"{HB_PYTHON} missing: run bash bench/setup_hakubooru.sh")
    out = work / "hb" / "captions.jsonl"
    cmd = [str(HB_PYTHON), str(BENCH / "hakubooru_side.py"), "--db", str(db),
           "--out", str(out), "--ranges", ranges, "--seed", str(seed)]  # fmt: skip
    stdout, wall = _run(cmd)
    res = json.loads(stdout.strip().splitlines()[-1])
    res["total_s"] = round(res["select_s"] + res["caption_s"], 3)
    res["wall_s"] = round(wall, 3)
    return res


def kohaku_toml(
    db: Path, run_dir: Path, ranges: list[dict], seed: int, fav: dict, hb_dates: bool = False
) -> str:
    """The kohaku run config: same filters (kohaku's defaults), same ranges, HakuBooru's table
    (and, with `hb_dates`, HakuBooru's exact year spans instead of kohaku's default ones)."""
    table = ", ".join(f"{r} = {[fav[r][str(p)] for p in PERCENTILES]}" for r in fav)
    lines = [f"run_dir = {json.dumps(str(run_dir))}", "", "[sample]",
             f"source = {json.dumps(str(db))}", f"seed = {seed}", ""]  # fmt: skip
    for r in ranges:
        lines += ["[[sample.ranges]]", f"start = {int(r.get('start', 0))}"]
        if r.get("end") is not None:
            lines.append(f"end = {int(r['end'])}")
        lines += [f"count = {json.dumps(r.get('count', 'all'))}", ""]
    lines += ["[tag]", 'layout = "hakubooru"', "", "[tag.quality]", f"percentiles = {PERCENTILES}",
              "max_post_id = 7100000", f"table = {{{table}}}", ""]  # fmt: skip
    for lo, hi, tag in HB_DATES if hb_dates else []:
        lines += ["[[tag.date_tags]]", f"first_year = {lo}", f"last_year = {hi}", f'tag = "{tag}"']
    return "\n".join(lines)


def run_kohaku(toml: Path, run_dir: Path, threads: int) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(KOHAKU), "build-dataset", "-c", str(toml), "--threads", str(threads)]
    _, wall = _run(cmd)
    total = {s: json.loads((run_dir / s / "manifest.json").read_text())["timings"]["total"]
             for s in ("sample", "tag")}  # fmt: skip
    return {
        "sample_s": total["sample"],
        "tag_s": total["tag"],
        "stage_total_s": round(total["sample"] + total["tag"], 3),
        "wall_s": round(wall, 3),
    }


def split_caption(caption: str) -> tuple[list[str], list[str]]:
    """`keep, |||rest` -> (keep tags, rest tags)."""
    keep, _, rest = caption.partition("|||")
    keep = keep.removesuffix(", ")
    return [t for t in keep.split(", ") if t], [t for t in rest.split(", ") if t]


def _kind(tag: str) -> str:
    for name, group in (("quality", QUALITY), ("year", YEAR), ("rating", RATING)):
        if tag in group:
            return name
    return "tag"


def classify(hb: str, kh: str) -> tuple[str, dict]:
    """Category of one mismatch (HakuBooru caption `hb` vs kohaku's `kh`) and its diff."""
    (hk, hr), (kk, kr) = split_caption(hb), split_caption(kh)
    if hk + hr == kk + kr:
        return "formatting only (same tag lists)", {}
    missing = Counter(hk + hr) - Counter(kk + kr)  # in HakuBooru's, not kohaku's
    extra = Counter(kk + kr) - Counter(hk + hr)
    diff = {"missing_in_kohaku": sorted(missing), "extra_in_kohaku": sorted(extra)}
    if not missing and not extra:
        if Counter(hk) != Counter(kk):
            return "keep/body placement", diff
        part = "keep" if hk != kk else "body"
        return f"order only ({part})", diff
    kinds = sorted({f"{_kind(t)} missing" for t in missing} | {f"{_kind(t)} extra" for t in extra})
    if kinds in (["quality extra", "quality missing"], ["year extra", "year missing"]):
        return f"{kinds[0].split()[0]} tag differs", diff
    return " + ".join(kinds), diff


def compare(hb: pl.DataFrame, kh: pl.DataFrame) -> dict:
    both = hb.join(kh, on="id", how="inner", suffix="_kohaku").sort("id")
    same = both.filter(pl.col("caption") == pl.col("caption_kohaku"))
    cats: dict[str, dict] = {}
    for pid, a, b in both.filter(pl.col("caption") != pl.col("caption_kohaku")).iter_rows():
        name, diff = classify(a, b)
        cat = cats.setdefault(name, {"count": 0, "examples": []})
        cat["count"] += 1
        if len(cat["examples"]) < 3:
            cat["examples"].append({"id": pid, "hakubooru": a, "kohaku": b, **diff})
    n = both.height
    return {
        "posts_in_common": n,
        "exact_matches": same.height,
        "match_rate": round(same.height / n, 6) if n else None,
        "mismatch_categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["count"])),
    }


def selection_reasons(db: Path, ids: list[int], sampled: bool) -> dict:
    """Why posts chosen by one side only were not chosen by the other."""
    if not ids:
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.execute("CREATE TEMP TABLE ids (id INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in ids])
    rows = con.execute("""SELECT p.md5, p.file_url, p.file_ext FROM post p JOIN ids USING (id)""")
    reasons = Counter()
    for md5, url, ext in rows:
        if (md5 or "") == "":
            reasons["md5 is '' (kohaku: restricted; HakuBooru only checks NULL)"] += 1
        elif (url or "") == "":
            reasons["file_url NULL/'' (kohaku's restricted rule; HakuBooru keeps it)"] += 1
        elif ext not in ("jpg", "jpeg", "png", "webp", "avif"):
            reasons[f"file_ext {ext!r}"] += 1
        else:
            reasons["different random draw" if sampled else "unexplained"] += 1
    con.close()
    return dict(reasons)


def read_captions(work: Path, run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(HakuBooru's, kohaku's) captions as (id, caption) frames."""
    schema = {"id": pl.Int64, "caption": pl.String}
    hb = pl.read_ndjson(work / "hb" / "captions.jsonl", schema=schema)
    kh = pl.read_parquet(run_dir / "tag" / "captions.parquet", columns=["id", "caption"])
    return hb, kh.cast(schema)


def selection(db: Path, hb: pl.DataFrame, kh: pl.DataFrame, sampled: bool) -> dict:
    only_hb = sorted(set(hb["id"]) - set(kh["id"]))
    only_kh = sorted(set(kh["id"]) - set(hb["id"]))
    return {"only_hakubooru": len(only_hb), "only_kohaku": len(only_kh),
            "only_hakubooru_why": selection_reasons(db, only_hb, sampled),
            "only_kohaku_why": selection_reasons(db, only_kh, sampled)}  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=BENCH / "out" / "synth-200000-s0.db")
    ap.add_argument("--posts", type=int, default=200_000, help="posts if --db must be made")
    ap.add_argument("--ranges", default=ALL, help='JSON list of {"start", "end", "count"}')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--hakubooru-dates",
        action="store_true",
        help="give kohaku HakuBooru's exact year spans (<2005 early, none after 2024)",
    )
    ap.add_argument("--work", type=Path, default=BENCH / "out" / "hakubooru-compare")
    ap.add_argument("--kohaku-source", type=Path, help="kohaku reads this instead of --db, "
                    "e.g. the `kohaku export-parquet` folder of the same database")  # fmt: skip
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    db, work = ensure_db(args.db.resolve(), args.posts), args.work.resolve()
    ranges = json.loads(args.ranges)
    hb_t = run_hakubooru(db, work, args.ranges, args.seed)
    fav = json.loads(Path(hb_t.pop("fav_table")).read_text())
    toml, run_dir = work / "kohaku.toml", work / "run"
    source = (args.kohaku_source or db).resolve()
    toml.write_text(kohaku_toml(source, run_dir, ranges, args.seed, fav, args.hakubooru_dates))
    kh_t = run_kohaku(toml, run_dir, args.threads)
    hb, kh = read_captions(work, run_dir)
    sampled = any(r.get("count", "all") != "all" for r in ranges)
    summary = {
        "db": str(db), "kohaku_source": str(source), "ranges": ranges, "seed": args.seed,
        "hakubooru_dates": args.hakubooru_dates, "hakubooru": hb_t, "kohaku": kh_t,
        "speedup": {"stage_total": round(hb_t["total_s"] / kh_t["stage_total_s"], 1),
                    "wall": round(hb_t["total_s"] / kh_t["wall_s"], 1)},
        "posts": {"hakubooru": hb.height, "kohaku": kh.height},
        "selection": selection(db, hb, kh, sampled),
        **compare(hb, kh),
    }  # fmt: skip
    (work / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(json.dumps(summary, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
