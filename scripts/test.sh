#!/usr/bin/env bash
# The test suite: every crate's unit and integration tests, then the TensorFlow
# compatibility check (Kiln-written shards read back by real TensorFlow).
# Needs: `pip install "moto[server]" tensorflow-cpu pyarrow` (S3, TensorFlow and Parquet peers).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
if [ -f .ci/tf_compat.py ]; then
  dir=$(mktemp -d)
  cargo run --locked -q -p kiln-connectors --example write_compat -- "$dir"
  python3 .ci/tf_compat.py "$dir"
  rm -rf "$dir"
fi
