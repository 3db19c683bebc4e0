"""Compares a peer's examples table with Kiln's committed examples dataset, row for row.

    check_equal.py KILN_DATASET_DIR PEER_EXAMPLES.parquet [--rel-tol 1e-9]

KILN_DATASET_DIR is a committed `kiln features` output (its _manifest.json lists the Parquet
shards). Both sides are sorted by the key (event_id); the column names and order must match;
every column is compared: integers, strings and timestamps exactly, floats to a relative
tolerance (|a - b| <= rel_tol * max(|a|, |b|), default 1e-9, the spec's), NULL equal to NULL
only. Prints one JSON line; exits 1 when the tables differ.
"""

import argparse
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def kiln_table(dataset):
    with open(os.path.join(dataset, "_manifest.json")) as f:
        manifest = json.load(f)
    paths = [os.path.join(dataset, s["path"]) for s in manifest["shards"]
             if s["format"] == "parquet"]
    if not paths:
        raise SystemExit(f"{dataset}: the manifest lists no Parquet shards")
    return pa.concat_tables(pq.read_table(p) for p in paths)


def compare_column(name, a, b, rel_tol):
    """The number of rows that differ, and the first such row index (or None)."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    na = a.is_null().to_numpy(zero_copy_only=False)
    nb = b.is_null().to_numpy(zero_copy_only=False)
    bad = na != nb
    both = ~na & ~nb
    if pa.types.is_floating(a.type) or pa.types.is_floating(b.type):
        x = pc.cast(a, pa.float64()).to_numpy(zero_copy_only=False)
        y = pc.cast(b, pa.float64()).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            ok = np.abs(x - y) <= rel_tol * np.maximum(np.abs(x), np.abs(y))
        bad |= both & ~ok
    else:
        if pa.types.is_timestamp(a.type):
            a, b = pc.cast(a, pa.int64()), pc.cast(b, pa.int64())
        elif pa.types.is_integer(a.type) and pa.types.is_integer(b.type):
            a, b = pc.cast(a, pa.int64()), pc.cast(b, pa.int64())
        elif a.type != b.type:
            b = pc.cast(b, a.type)
        eq = pc.fill_null(pc.equal(a, b), True).to_numpy(zero_copy_only=False)
        bad |= both & ~eq
    n = int(bad.sum())
    return n, (int(np.argmax(bad)) if n else None)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kiln_dataset")
    p.add_argument("peer_examples")
    p.add_argument("--key", default="event_id")
    p.add_argument("--rel-tol", type=float, default=1e-9)
    p.add_argument("--name", default="peer", help="the peer's name, for the report")
    a = p.parse_args()
    k = kiln_table(a.kiln_dataset).sort_by(a.key)
    q = pq.read_table(a.peer_examples).sort_by(a.key)
    report = {"peer": a.name, "rows_kiln": k.num_rows, "rows_peer": q.num_rows,
              "rel_tol": a.rel_tol, "columns": k.num_columns, "differences": []}
    diffs = report["differences"]
    if k.column_names != q.column_names:
        diffs.append({"columns": {"kiln": k.column_names, "peer": q.column_names}})
    if k.num_rows != q.num_rows:
        diffs.append({"rows": {"kiln": k.num_rows, "peer": q.num_rows}})
    if not diffs:
        types = {}
        for name in k.column_names:
            ta, tb = k.schema.field(name).type, q.schema.field(name).type
            if ta != tb:
                types[name] = {"kiln": str(ta), "peer": str(tb)}
            n, first = compare_column(name, k[name], q[name], a.rel_tol)
            if n:
                diffs.append({"column": name, "rows_differing": n,
                              "first": {"key": k[a.key][first].as_py(),
                                        "kiln": k[name][first].as_py(),
                                        "peer": q[name][first].as_py()}})
        # Types are reported but not a difference: values are compared as the spec types.
        report["type_differences"] = types
    report["equal"] = not diffs
    print(json.dumps(report, default=str))
    sys.exit(0 if report["equal"] else 1)


if __name__ == "__main__":
    main()
