#!/usr/bin/env bash
# Create bench/.venv-hakubooru with HakuBooru 0.0.3 (the reference captioner) for
# bench/hakubooru_compare.py. Idempotent.   bash bench/setup_hakubooru.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
# hakubooru's own requirements (peewee, python-dateutil, webdataset) come with it;
# tqdm is imported by hakubooru.export but not declared.
make_venv hakubooru 'import hakubooru, hakubooru.caption, hakubooru.export, peewee, dateutil, webdataset, tqdm
import importlib.metadata as m; assert m.version("hakubooru") == "0.0.3"' \
    "hakubooru==0.0.3" peewee python-dateutil webdataset tqdm
