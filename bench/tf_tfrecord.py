#!/usr/bin/env python3
"""TensorFlow side of `kiln bench tfrecord --tf PYTHON`.

Given the rows Kiln benchmarks (a Parquet file it writes, read here with pyarrow outside the
timings), on one thread (TensorFlow's inter- and intra-op pools and tf.data's private pool set
to 1):

* `write`: a `tf.train.Example` per row built the way TensorFlow's TFRecord tutorial does
  (`tf.train.Feature(int64_list=...)` etc. per column, a null leaves the feature out, as Kiln
  does), `SerializeToString()` and `tf.io.TFRecordWriter` into `--out` (uncompressed);
  best of `--repeat`. Strings are UTF-8 `bytes` before the clock starts (Arrow's strings are
  bytes already).
* `read`: `tf.data.TFRecordDataset(--out).batch(--batch).map(tf.io.parse_example)` over the
  whole file with every column in the spec (`FixedLenFeature` int64 / float32 / string with a
  default for absent features); best of `--repeat`.
* `kiln_file`: `--kiln`, Kiln's file, parsed the same way (untimed): its row count, and per
  column the sum of the int64 values (a decimal string: exact), of the float32 values (as
  float64) and the total length of the strings, for Kiln to compare with its own decode.

Prints one JSON line.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402


def example_columns(table):
    """(name, kind, Python values) per column, and the parse_example spec."""
    columns, spec = [], {}
    for field, col in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_boolean(t):
            kind, values = "int64", col.cast(pa.int64()).to_pylist()
            spec[field.name] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            kind, values = "float", col.cast(pa.float64()).to_pylist()
            spec[field.name] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            kind = "bytes"
            values = [None if v is None else v.encode() for v in col.to_pylist()]
            spec[field.name] = tf.io.FixedLenFeature([], tf.string, default_value=b"")
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            kind, values = "bytes", col.to_pylist()
            spec[field.name] = tf.io.FixedLenFeature([], tf.string, default_value=b"")
        else:
            raise SystemExit(f"column {field.name}: type {t} is not a scalar this benchmark writes")
        columns.append((field.name, kind, values))
    return columns, spec


def write(path, columns, rows):
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(rows):
            feature = {}
            for name, kind, values in columns:
                v = values[i]
                if v is None:
                    continue
                if kind == "int64":
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
                elif kind == "float":
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                else:
                    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def dataset(path, spec, batch):
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return (
        tf.data.TFRecordDataset(path)
        .batch(batch)
        .map(lambda records: tf.io.parse_example(records, spec))
        .with_options(options)
    )


def read(path, spec, batch):
    first = next(iter(spec))
    rows = 0
    for parsed in dataset(path, spec, batch):
        rows += int(parsed[first].shape[0])
    return rows


def checksums(path, spec, batch):
    rows, int_sums, float_sums, byte_lens = 0, {}, {}, {}
    for parsed in dataset(path, spec, batch):
        for name, tensor in parsed.items():
            v = tensor.numpy()
            if tensor.dtype == tf.int64:
                int_sums[name] = int_sums.get(name, 0) + int(v.astype(object).sum())
            elif tensor.dtype == tf.float32:
                float_sums[name] = float_sums.get(name, 0.0) + float(v.astype(np.float64).sum())
            else:
                byte_lens[name] = byte_lens.get(name, 0) + sum(len(s) for s in v)
        rows += int(next(iter(parsed.values())).shape[0])
    return {
        "rows": rows,
        "int_sums": {k: str(v) for k, v in int_sums.items()},
        "float_sums": float_sums,
        "byte_lengths": byte_lens,
    }


def best_of(repeat, f):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = f()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="Parquet file of the rows to write")
    p.add_argument("--out", required=True, help="the TFRecord file TensorFlow writes")
    p.add_argument("--kiln", required=True, help="Kiln's TFRecord file of the same rows")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=1024)
    a = p.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    table = pq.read_table(a.rows)
    columns, spec = example_columns(table)
    rows = table.num_rows
    write_s, _ = best_of(a.repeat, lambda: write(a.out, columns, rows))
    read_s, read_rows = best_of(a.repeat, lambda: read(a.out, spec, a.batch))
    if read_rows != rows:
        raise SystemExit(f"{a.out}: read back {read_rows} records, wrote {rows}")
    print(
        json.dumps(
            {
                "tensorflow": tf.__version__,
                "rows": rows,
                "write": {"seconds": write_s, "bytes": os.path.getsize(a.out)},
                "read": {"seconds": read_s},
                "kiln_file": checksums(a.kiln, spec, a.batch),
            }
        )
    )


if __name__ == "__main__":
    main()
