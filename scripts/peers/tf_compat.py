#!/usr/bin/env python3
"""Read Kiln-written TFRecord files and a Kiln dataset with real TensorFlow and compare value
for value with the expected values that `write_compat` computed from its Arrow inputs.

Usage: python3 scripts/peers/tf_compat.py OUT_DIR   (after `$CARGO_TARGET_DIR/debug/examples/write_compat OUT_DIR`)
Run by scripts/test.sh (the "tensorflow compat" peer check) with its venv's Python.
Exits non-zero on the first mismatch.
"""
import base64
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402


def fail(msg):
    print(f"tf_compat: MISMATCH: {msg}", file=sys.stderr)
    sys.exit(1)


def feature_to_py(feature):
    kind = feature.WhichOneof("kind")
    if kind is None:
        return {"kind": None, "value": []}
    vals = list(getattr(feature, kind).value)
    if kind == "bytes_list":
        vals = [base64.b64encode(v).decode() for v in vals]
    elif kind == "float_list":
        vals = [float(v) for v in vals]  # float32 -> double, exact
    else:
        vals = [int(v) for v in vals]
    return {"kind": kind, "value": vals}


def check_file(path, compression, rows_by_id, kinds):
    raws = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)]
    seen = set()
    for i, raw in enumerate(raws):
        ex = tf.train.Example.FromString(raw)
        got = {k: feature_to_py(v) for k, v in ex.features.feature.items()}
        rid = got["id"]["value"][0]
        want = rows_by_id[rid]
        if got != want:
            keys = sorted(set(got) | set(want))
            diff = {k: (got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)}
            fail(f"{path} record {i} (id {rid}): {diff}")
        seen.add(rid)

    # tf.io.parse_example: every feature as VarLen of its kind, id as a FixedLen scalar.
    dtypes = {"int64_list": tf.int64, "float_list": tf.float32, "bytes_list": tf.string}
    spec = {k: tf.io.VarLenFeature(dtypes[kind]) for k, kind in kinds.items() if k != "id"}
    spec["id"] = tf.io.FixedLenFeature([], tf.int64)
    parsed = tf.io.parse_example(tf.constant(raws), spec)
    ids = parsed["id"].numpy().tolist()
    for name, kind in kinds.items():
        if name == "id":
            continue
        sp = parsed[name]
        idx = sp.indices.numpy()
        vals = sp.values.numpy()
        per_row = {}
        for (r, _), v in zip(idx, vals):
            per_row.setdefault(int(r), []).append(v)
        for r, rid in enumerate(ids):
            want = rows_by_id[rid].get(name)
            want_vals = want["value"] if want else []
            got_vals = per_row.get(r, [])
            if kind == "bytes_list":
                got_vals = [base64.b64encode(v).decode() for v in got_vals]
            elif kind == "float_list":
                got_vals = [float(v) for v in got_vals]
            else:
                got_vals = [int(v) for v in got_vals]
            if got_vals != want_vals:
                fail(f"{path}: parse_example feature {name} id {rid}: got {got_vals}, want {want_vals}")
    return seen, len(raws)


def main():
    out = sys.argv[1]
    exp = json.load(open(os.path.join(out, "expected.json")))
    rows = exp["rows"]
    kinds = exp["kinds"]
    rows_by_id = {r["id"]["value"][0]: r for r in rows}
    all_ids = set(rows_by_id)
    for f in exp["files"]:
        seen, n = check_file(os.path.join(out, f["path"]), f["compression"], rows_by_id, kinds)
        if seen != all_ids or n != len(rows):
            fail(f"{f['path']}: read {n} records, ids {sorted(all_ids - seen)} missing")
        print(f"tf_compat: {f['path']} ({f['compression'] or 'uncompressed'}): {n} records OK")

    ds = os.path.join(out, exp["dataset"]["path"])
    manifest = json.load(open(os.path.join(ds, "_manifest.json")))
    if not os.path.exists(os.path.join(ds, "_SUCCESS")):
        fail("dataset has no _SUCCESS")
    seen_all = set()
    total = 0
    comp_names = {"none": "", "gzip": "GZIP", "zlib": "ZLIB"}
    for s in manifest["shards"]:
        if s["format"] != "tfrecord":
            continue
        seen, n = check_file(os.path.join(ds, s["path"]), comp_names[s["compression"]], rows_by_id, kinds)
        if n != s["rows"]:
            fail(f"{s['path']}: {n} records, manifest says {s['rows']}")
        if seen & seen_all:
            fail(f"{s['path']}: ids also in another shard: {sorted(seen & seen_all)}")
        seen_all |= seen
        total += n
    if seen_all != all_ids or total != exp["dataset"]["total_rows"]:
        fail(f"dataset: {total} rows, missing ids {sorted(all_ids - seen_all)}")
    print(f"tf_compat: dataset ({sum(1 for s in manifest['shards'] if s['format'] == 'tfrecord')} TFRecord shards): {total} records OK")

    try:
        import pyarrow.parquet as pq  # optional: pandas/pyarrow users read the Parquet shards
    except ImportError:
        print("tf_compat: pyarrow not installed; Parquet shards not checked with pyarrow")
    else:
        n = 0
        for s in manifest["shards"]:
            if s["format"] == "parquet":
                t = pq.read_table(os.path.join(ds, s["path"]))
                if t.num_rows != s["rows"]:
                    fail(f"{s['path']}: pyarrow reads {t.num_rows} rows, manifest says {s['rows']}")
                n += t.num_rows
        print(f"tf_compat: pyarrow read {n} Parquet rows OK")
    print(f"tf_compat: OK (TensorFlow {tf.__version__})")


if __name__ == "__main__":
    main()
