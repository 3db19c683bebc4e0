#!/usr/bin/env bash
# The example daily job on embedded defaults: local files, local DataFusion, CPU training,
# the SQLite run metadata store and a local model repository.
# Usage: bash examples/daily_ctr/run.sh [DATE]   (default 2026-11-20)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
date="${1:-2026-11-20}"
# librdkafka (Kafka sources) links the system OpenSSL and the Spark Connect protos are compiled
# with protoc: both are installed if missing.
# shellcheck source=../../scripts/lib/apt.sh
source "$root/scripts/lib/apt.sh"
# shellcheck source=../../scripts/lib/build_deps.sh
source "$root/scripts/lib/build_deps.sh"
kiln_build_deps
kiln() { cargo run --manifest-path "$root/Cargo.toml" --release -q -p kiln-jobs --bin kiln -- "$@"; }

if [ ! -d "$here/data/events" ]; then
  echo "== generating sample events (2M events, 9 days ending 2026-11-21)"
  kiln gen events --rows 2000000 --days 9 --end-date 2026-11-21 --seed 42 \
    --out "$here/data/events" --format parquet
fi

echo "== the daily pipeline for $date: features -> train -> evaluate -> gate -> publish"
kiln run "$here/job.toml" --date "$date"

echo "== the model repository"
kiln models list "$here/job.toml"
