"""The img2dataset side of bench/download_compare.py; runs in bench/.venv-img2dataset.

    bench/.venv-img2dataset/bin/python bench/img2dataset_side.py --urls URLS.parquet \
        --out DIR --format webp --quality 90

Calls `img2dataset.download` on a parquet url list (columns url, md5) with md5
verification on (`verify_hash=["md5", "md5"]`, `compute_hash="md5"`), "files" output,
`resize_mode="center_crop"`, `image_size=1024`, its default INTER_AREA downscaling, no
EXIF extraction, no retries. `--out` is emptied first (img2dataset 1.47.0's own
`incremental_mode="overwrite"` also deletes its _tmp folder of url shards, then fails).
Prints one JSON line: wall seconds of the `download` call (worker start included),
images written, failures by error message, output bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", required=True, help="parquet file with url and md5 columns")
    ap.add_argument("--out", required=True, help="output folder (emptied first)")
    ap.add_argument("--format", choices=["webp", "jpg"], default="webp")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=250)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    from img2dataset import download

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    download(
        url_list=args.urls,
        input_format="parquet",
        url_col="url",
        output_folder=str(out),
        output_format="files",
        processes_count=args.processes,
        thread_count=args.threads,
        number_sample_per_shard=args.shard_size,
        image_size=1024,
        resize_mode="center_crop",
        encode_format=args.format,
        encode_quality=args.quality,
        compute_hash="md5",
        verify_hash=["md5", "md5"],
        extract_exif=False,
        retries=0,
        timeout=30,
    )
    wall = time.perf_counter() - t0
    stats = pq.read_table(sorted(out.glob("*.parquet"))).to_pydict()
    status = Counter(stats["status"])
    pairs = zip(stats["status"], stats["error_message"], strict=True)
    errors = Counter(e for s, e in pairs if s != "success")
    files = list(out.glob(f"*/*.{args.format}"))
    result = {
        "wall_s": round(wall, 3), "ok": status.get("success", 0), "rows": len(stats["status"]),
        "errors": dict(errors), "out_bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
