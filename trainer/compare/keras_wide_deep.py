#!/usr/bin/env python3
"""Keras 3 / TensorFlow reference for `kiln train`: the same wide & deep on the same shards.

Reads the TFRecord shards of a committed Kiln dataset (through its _manifest.json), builds
user/item ids hashed to --buckets buckets -> 16-dim embeddings (+ a wide linear part over the
same hashed ids), the numeric columns normalised with training mean/std (nulls -> 0 plus an
is-null input), MLP 256-128-1, batch 1024, Adam (lr 1e-3), for the same number of examples,
and prints held-out AUC / log loss and training examples/s as one JSON line.

The held-out split is exactly Kiln's `eval = { by = "hash", key = ..., fraction = ... }`: a row is
held out when xxh3_64 of its key (8 bytes, little-endian) modulo 1e6 is below fraction * 1e6, so
both frameworks are scored on the same rows (needs `pip install xxhash`). String columns given
with `--string-categorical name:buckets` are hashed into that many buckets (Kiln builds a
vocabulary of about that size for them).

    python3 trainer/compare/keras_wide_deep.py DATASET_DIR --numeric price,dwell_ms,...
"""
import argparse
import glob
import json
import os
import time

import numpy as np
import tensorflow as tf
import xxhash

SPLIT_SLOTS = 1_000_000


def exact_auc(y, p):
    """Exact AUC over all rows (ties count one half), like Kiln's evaluation."""
    order = np.argsort(p, kind="mergesort")
    _, inverse, counts = np.unique(p[order], return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    ranks = np.empty(len(p))
    ranks[order] = ((end - counts + 1 + end) / 2.0)[inverse]
    pos = float(y.sum())
    neg = len(y) - pos
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", help="local dataset directory (with _manifest.json)")
    ap.add_argument("--categorical", default="user_id,item_id")
    ap.add_argument("--string-categorical", default="", help="name:buckets,... (string columns)")
    ap.add_argument("--numeric", default="")
    ap.add_argument("--label", default="label")
    ap.add_argument("--key", default="event_id")
    ap.add_argument("--eval-fraction", type=float, default=0.1)
    ap.add_argument("--buckets", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="train exactly this many steps (0: epochs)")
    ap.add_argument("--seed", type=int, default=42, help="weight initialisation and shuffling")
    ap.add_argument("--cache", action="store_true",
                    help="keep the parsed training rows in memory (filled by the statistics pass), "
                         "so the timed training measures the model, not TFRecord decoding")
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(args.seed)

    manifest = json.load(open(os.path.join(args.dataset, "_manifest.json")))
    files = sorted(
        os.path.join(args.dataset, s["path"])
        for s in manifest["shards"]
        if s["path"].endswith(".tfrecord") or s["path"].endswith(".tfrecord.gz")
    )
    if not files:
        files = sorted(glob.glob(os.path.join(args.dataset, "run-*", "*.tfrecord*")))
    compression = "GZIP" if files[0].endswith(".gz") else ""
    cats = [c for c in args.categorical.split(",") if c]
    nums = [c for c in args.numeric.split(",") if c]
    spec = {c: tf.io.FixedLenFeature([], tf.int64) for c in cats}
    str_cats = {}
    for item in [x for x in args.string_categorical.split(",") if x]:
        name, buckets = item.split(":")
        str_cats[name] = int(buckets)
        spec[name] = tf.io.FixedLenFeature([], tf.string, default_value="")
    # Integer columns are int64_list features: parse them as int64 (missing -> a sentinel)
    # and turn them into float32 (missing -> NaN) after parsing.
    types = {f["name"]: f["type"] for f in manifest["schema"]["fields"]}
    int_nums = [c for c in nums if not types.get(c, "Float").startswith("Float")]
    missing = -(2**63)
    spec.update({c: tf.io.FixedLenFeature([], tf.float32, default_value=float("nan")) for c in nums if c not in int_nums})
    spec.update({c: tf.io.FixedLenFeature([], tf.int64, default_value=missing) for c in int_nums})

    def ints_to_float(ex):
        for c in int_nums:
            v = ex[c]
            ex[c] = tf.where(v == missing, tf.constant(float("nan")), tf.cast(v, tf.float32))
        return ex
    spec[args.label] = tf.io.FixedLenFeature([], tf.int64)
    spec[args.key] = tf.io.FixedLenFeature([], tf.int64)
    limit = round(args.eval_fraction * SPLIT_SLOTS)

    def held_out_flags(keys):
        # Kiln's split: xxh3_64(i64 little-endian) % 1e6 < limit.
        return np.array(
            [xxhash.xxh3_64_intdigest(int(k).to_bytes(8, "little", signed=True)) % SPLIT_SLOTS < limit for k in keys],
            dtype=np.bool_,
        )

    # The split is computed once, up front, into a hash table of held-out keys, so the input
    # pipeline below is native TensorFlow ops only (no per-row Python) and the training speed
    # measured is Keras's own.
    key_spec = {args.key: tf.io.FixedLenFeature([], tf.int64)}
    keys = np.concatenate([
        k.numpy()
        for k in tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
        .batch(65536)
        .map(lambda b: tf.io.parse_example(b, key_spec)[args.key], num_parallel_calls=tf.data.AUTOTUNE)
    ])
    held = keys[held_out_flags(keys)]
    held_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(held, tf.int64), tf.ones(len(held), tf.int64)),
        default_value=0,
    )

    def parse_batch(b):
        ex = ints_to_float(tf.io.parse_example(b, spec))
        ex["_held_out"] = held_table.lookup(ex[args.key]) > 0
        return ex

    # Every map below works on whole batches (tf.data runs a per-element map about an order of
    # magnitude slower); only unbatch / shuffle / batch touch single rows.
    raw = tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
    parsed = raw.batch(4096).map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE)

    def rows_where(keep):
        return lambda ex: {k: tf.boolean_mask(v, keep(ex["_held_out"])) for k, v in ex.items()}

    train_ds = parsed.map(rows_where(tf.logical_not), num_parallel_calls=tf.data.AUTOTUNE)
    if args.cache:
        train_ds = train_ds.cache()
    train_ds = train_ds.unbatch()
    eval_batches = parsed.map(rows_where(tf.identity), num_parallel_calls=tf.data.AUTOTUNE)

    # Normalisation statistics from the training rows (like Kiln's transform fit pass).
    stats = {c: [0.0, 0.0, 0] for c in nums}
    n_train = 0
    for b in train_ds.batch(65536):
        n_train += int(tf.shape(b[args.label])[0])
        for c in nums:
            v = b[c]
            ok = tf.logical_not(tf.math.is_nan(v))
            v = tf.boolean_mask(v, ok)
            stats[c][0] += float(tf.reduce_sum(tf.cast(v, tf.float64)))
            stats[c][1] += float(tf.reduce_sum(tf.square(tf.cast(v, tf.float64))))
            stats[c][2] += int(tf.size(v))
    norm = {}
    for c, (s, sq, n) in stats.items():
        mean = s / max(n, 1)
        std = max((sq / max(n, 1) - mean * mean), 0.0) ** 0.5 or 1.0
        norm[c] = (mean, std)

    def features(ex):
        x = {c: tf.math.floormod(tf.cast(tf.strings.to_hash_bucket_fast(tf.strings.as_string(ex[c]), args.buckets), tf.int64), args.buckets) for c in cats}
        x.update({c: tf.strings.to_hash_bucket_fast(ex[c], n) for c, n in str_cats.items()})
        cols = []
        for c in nums:
            v = ex[c]
            isnan = tf.math.is_nan(v)
            mean, std = norm[c]
            cols.append(tf.where(isnan, 0.0, (v - mean) / std))
            cols.append(tf.cast(isnan, tf.float32))
        if cols:
            x["numeric_inputs"] = tf.stack(cols, axis=-1)
        return x, tf.cast(ex[args.label], tf.float32)

    inputs, deep, wide = {}, [], []
    for c in cats:
        inp = tf.keras.Input(shape=(), dtype=tf.int64, name=c)
        inputs[c] = inp
        deep.append(tf.keras.layers.Embedding(args.buckets, args.dim)(inp))
        wide.append(tf.keras.layers.Embedding(args.buckets, 1)(inp))
    for c, n in str_cats.items():
        inp = tf.keras.Input(shape=(), dtype=tf.int64, name=c)
        inputs[c] = inp
        deep.append(tf.keras.layers.Embedding(n, args.dim)(inp))
        wide.append(tf.keras.layers.Embedding(n, 1)(inp))
    if nums:
        d = tf.keras.Input(shape=(2 * len(nums),), name="numeric_inputs")
        inputs["numeric_inputs"] = d
        deep.append(d)
    h = tf.keras.layers.Concatenate()(deep)
    h = tf.keras.layers.Dense(256, activation="relu")(h)
    h = tf.keras.layers.Dense(128, activation="relu")(h)
    logit = tf.keras.layers.Dense(1)(h)
    w = tf.keras.layers.Add()(wide) if len(wide) > 1 else wide[0]
    logit = tf.keras.layers.Add()([logit, w])
    out = tf.keras.layers.Activation("sigmoid")(tf.keras.layers.Flatten()(logit))
    model = tf.keras.Model(inputs, out)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="binary_crossentropy")

    steps = args.steps or args.epochs * (n_train // args.batch)
    ds = (
        train_ds.shuffle(16384, seed=args.seed)
        .batch(args.batch, drop_remainder=True)
        .map(features, num_parallel_calls=tf.data.AUTOTUNE)
        .repeat()
        .prefetch(8)
    )
    # Warm-up step (graph tracing) is excluded from the timing, like Kiln's fit pass.
    model.fit(ds.take(1), verbose=0)
    t0 = time.time()
    model.fit(ds, steps_per_epoch=steps - 1, epochs=1, verbose=0)
    dt = time.time() - t0

    ev = eval_batches.map(features)
    ys, ps = [], []
    for x, y in ev:
        ps.append(model(x, training=False).numpy())
        ys.append(y.numpy())
    y = np.concatenate(ys).reshape(-1)
    p = np.clip(np.concatenate(ps).reshape(-1), 1e-7, 1 - 1e-7)
    auc = exact_auc(y, p)
    logloss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    print(json.dumps({
        "framework": f"tensorflow {tf.__version__} / keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else ''}",
        "seed": args.seed, "cache": args.cache, "train_rows": n_train, "steps": steps, "batch": args.batch,
        "examples_per_sec": (steps - 1) * args.batch / dt,
        "metrics": {"auc": auc, "logloss": logloss, "rows": int(len(y)),
                    "mean_prediction": float(p.mean()), "mean_label": float(y.mean())},
    }))


if __name__ == "__main__":
    main()
