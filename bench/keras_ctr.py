#!/usr/bin/env python3
"""Keras / TensorFlow side of `kiln bench train --data DATASET --keras PYTHON`.

Trains the model of a Kiln `[train]` table (the example job's wide & deep) with Keras on the
TFRecord shards of a committed Kiln dataset, and prints the throughput as one JSON line:

* `from_shards`: examples/s of `model.fit` fed by the tf.data pipeline below, reading the
  shards (what `kiln train` does; compare with its `examples_per_sec`);
* `input_only`: examples/s of that pipeline alone, iterated without training;
* `model_step`: examples/s of `model.fit` over 64 ready batches held in memory (no input
  work at all: the speed of Keras's training step).

The training step is compiled without XLA (`--jit-compile false`, the default here): on this
model on a CPU, Keras's `jit_compile="auto"` (XLA) measured 20-31k examples/s for the model
step against 39-45k without it (2 cores, TF 2.21, Keras 3.15).

The input pipeline is batched: no per-row Python, and no per-row tf.data map.

    TFRecordDataset(shards, GZIP, num_parallel_reads=AUTOTUNE)   serialized records
    .shuffle(16384)                                              one string per element
    .batch(4096)
    .map(parse_example + held-out mask + boolean_mask + features, AUTOTUNE)   whole batches
    .rebatch(batch_size, drop_remainder=True)                    the [train] batch
    .repeat().prefetch(AUTOTUNE)

Kiln's side (for comparison): per rank, shards in a seeded order, decoded by the connectors'
reader on its own thread, the split, the fitted feature transform and a 16384-row shuffle
buffer on the loader's background thread, `read_ahead` batches queued.

Setup outside the timings, as in Kiln (its fit pass): one pass over the shards parses the
split key and the numeric columns (batched), computes Kiln's held-out split exactly
(`xxh3_64(key as 8 bytes little-endian) % 1e6 < fraction * 1e6`, vectorised in NumPy below,
so no `xxhash` package is needed) into a `tf.lookup.StaticHashTable` of held-out keys, and the
training rows' mean/std per numeric column.

The model follows the `[train]` table: each `hash_buckets` column hashed into that many
buckets (+1), each `vocabulary` column hashed into `max_size` buckets (+1; Kiln builds a
vocabulary of at most that size), `embedding_dim`-wide embeddings plus (wide & deep) a wide
weight per id, the numeric columns normalised plus an is-null input each, the `hidden` ReLU
layers and one logit, sigmoid cross-entropy, Keras's Adam with the table's lr / betas /
epsilon (Keras's Adam updates every embedding row at every step, like Kiln's `lazy = false`).

    python bench/keras_ctr.py DATASET_DIR --config examples/daily_ctr/job.toml [--steps N]
"""
import argparse
import json
import os
import time
import tomllib

import numpy as np
import tensorflow as tf

SPLIT_SLOTS = 1_000_000
# Default secret of XXH3 (bytes 8..24), the two words the 4-8 byte path reads.
_XXH3_SECRET_8 = 0x1CAD21F72C81017C
_XXH3_SECRET_16 = 0xDB979083E96DD4DE
_PRIME_MX2 = np.uint64(0x9FB21C651E98DF25)


def xxh3_64_i64(keys):
    """xxh3_64 (seed 0) of each key's 8 little-endian bytes, as Kiln hashes an i64."""
    k = np.asarray(keys, dtype=np.int64).view(np.uint64)
    lo = k & np.uint64(0xFFFFFFFF)
    hi = k >> np.uint64(32)
    h = (hi + (lo << np.uint64(32))) ^ np.uint64(_XXH3_SECRET_8 ^ _XXH3_SECRET_16)
    h = h ^ ((h << np.uint64(49)) | (h >> np.uint64(15))) ^ ((h << np.uint64(24)) | (h >> np.uint64(40)))
    with np.errstate(over="ignore"):
        h = h * _PRIME_MX2
        h = h ^ ((h >> np.uint64(35)) + np.uint64(8))
        h = h * _PRIME_MX2
    return h ^ (h >> np.uint64(28))


assert int(xxh3_64_i64([1])[0]) == 3_439_722_301_264_460_078  # Kiln's connectors::shard test


def read_train_table(path):
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    if "train" not in doc:
        raise SystemExit(f"{path}: no [train] table")
    return doc["train"]


def shard_files(dataset):
    manifest = json.load(open(os.path.join(dataset, "_manifest.json")))
    files = [
        os.path.join(dataset, s["path"])
        for s in manifest["shards"]
        if s["path"].endswith(".tfrecord") or s["path"].endswith(".tfrecord.gz")
    ]
    if not files:
        raise SystemExit(f"{dataset}: the dataset has no TFRecord shards")
    types = {f["name"]: f["type"] for f in manifest["schema"]["fields"]}
    return sorted(files), types


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="local Kiln dataset directory (with _manifest.json)")
    ap.add_argument("--config", required=True, help="TOML with a [train] table (a job spec or a config)")
    ap.add_argument("--steps", type=int, default=0, help="timed training steps (0: one epoch of training rows)")
    ap.add_argument("--model-step-steps", type=int, default=200, help="steps of the in-memory model-step figure")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--jit-compile", choices=["auto", "true", "false"], default="false",
                    help="Keras's jit_compile (XLA) for the training step; off by default: on this "
                         "model on the CPU, XLA ('auto') made the step slower")
    ap.add_argument("--steps-per-execution", type=int, default=1,
                    help="training steps per call into the compiled step (Keras's steps_per_execution)")
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(args.seed)

    t = read_train_table(args.config)
    files, types = shard_files(args.dataset)
    compression = "GZIP" if files[0].endswith(".gz") else ""
    label, nums = t.get("label", "label"), list(t.get("numeric", []))
    batch, dim = int(t.get("batch_size", 1024)), int(t.get("embedding_dim", 16))
    hidden = list(t.get("hidden", [256, 128]))
    kind = t.get("model", "wide_deep")
    opt = t.get("optimizer", {"kind": "adam"})
    split = t.get("eval", {})
    if split.get("by", "hash") != "hash":
        raise SystemExit("the Keras reference implements Kiln's hash split only")
    key = split.get("key", "event_id")
    limit = round(float(split.get("fraction", 0.1)) * SPLIT_SLOTS)
    # Categorical columns: (name, buckets incl. null/OOV, is_string).
    cats = []
    for c in t.get("categorical", []):
        string = types.get(c["column"], "Int64") in ("Utf8", "LargeUtf8", "Utf8View")
        n = c["hash_buckets"] if "hash_buckets" in c else c["vocabulary"].get("max_size", 1000)
        cats.append((c["column"], int(n), string))

    missing_int = -(2**63)
    float_nums = [c for c in nums if types.get(c, "Float64").startswith("Float")]
    spec = {key: tf.io.FixedLenFeature([], tf.int64), label: tf.io.FixedLenFeature([], tf.int64)}
    for name, _, string in cats:
        spec[name] = tf.io.FixedLenFeature([], tf.string if string else tf.int64,
                                           default_value="" if string else missing_int)
    for c in nums:
        if c in float_nums:
            spec[c] = tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
        else:
            spec[c] = tf.io.FixedLenFeature([], tf.int64, default_value=missing_int)

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        for c in nums:
            if c not in float_nums:
                v = ex[c]
                ex[c] = tf.where(v == missing_int, tf.constant(float("nan")), tf.cast(v, tf.float32))
        return ex

    def raw():
        return tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)

    # Setup pass (untimed, like Kiln's fit pass): split keys and numeric statistics.
    t_setup = time.time()
    held_keys, sums = [], {c: [0.0, 0.0, 0] for c in nums}
    n_train = 0
    for ex in raw().batch(65536).map(parse, num_parallel_calls=tf.data.AUTOTUNE):
        keys = ex[key].numpy()
        held = xxh3_64_i64(keys) % np.uint64(SPLIT_SLOTS) < np.uint64(limit)
        held_keys.append(keys[held])
        train = ~held
        n_train += int(train.sum())
        for c in nums:
            v = ex[c].numpy()[train].astype(np.float64)
            v = v[~np.isnan(v)]
            sums[c][0] += float(v.sum())
            sums[c][1] += float((v * v).sum())
            sums[c][2] += int(v.size)
    held_keys = np.concatenate(held_keys)
    norm = {}
    for c, (s, sq, n) in sums.items():
        mean = s / max(n, 1)
        std = max(sq / max(n, 1) - mean * mean, 0.0) ** 0.5 or 1.0
        norm[c] = (np.float32(mean), np.float32(std))
    held_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(held_keys, tf.int64), tf.ones(len(held_keys), tf.int64)),
        default_value=0,
    )
    setup_seconds = time.time() - t_setup

    def train_features(serialized):
        """A batch of serialized records -> the training rows' model inputs and labels."""
        ex = parse(serialized)
        keep = tf.equal(held_table.lookup(ex[key]), 0)
        ex = {k: tf.boolean_mask(v, keep) for k, v in ex.items()}
        x = {}
        for name, n, string in cats:
            v = ex[name] if string else tf.strings.as_string(ex[name])
            x[name] = tf.strings.to_hash_bucket_fast(v, n)
        cols = []
        for c in nums:
            v = ex[c]
            isnan = tf.math.is_nan(v)
            mean, std = norm[c]
            cols.append(tf.where(isnan, 0.0, (v - mean) / std))
            cols.append(tf.cast(isnan, tf.float32))
        if cols:
            x["numeric_inputs"] = tf.stack(cols, axis=-1)
        return x, tf.cast(ex[label], tf.float32)

    def pipeline():
        return (
            raw()
            .shuffle(16384, seed=args.seed)
            .batch(4096)
            .map(train_features, num_parallel_calls=tf.data.AUTOTUNE)
            .rebatch(batch, drop_remainder=True)
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )

    inputs, deep, wide = {}, [], []
    for name, n, _ in cats:
        inp = tf.keras.Input(shape=(), dtype=tf.int64, name=name)
        inputs[name] = inp
        deep.append(tf.keras.layers.Embedding(n + 1, dim)(inp))
        if kind == "wide_deep":
            wide.append(tf.keras.layers.Embedding(n + 1, 1)(inp))
    if nums:
        d = tf.keras.Input(shape=(2 * len(nums),), name="numeric_inputs")
        inputs["numeric_inputs"] = d
        deep.append(d)
    h = tf.keras.layers.Concatenate()(deep)
    for width in hidden:
        h = tf.keras.layers.Dense(width, activation="relu")(h)
    logit = tf.keras.layers.Dense(1)(h)
    if wide:
        w = tf.keras.layers.Add()(wide) if len(wide) > 1 else wide[0]
        logit = tf.keras.layers.Add()([logit, w])
    out = tf.keras.layers.Activation("sigmoid")(tf.keras.layers.Flatten()(logit))
    model = tf.keras.Model(inputs, out)
    adam = tf.keras.optimizers.Adam(
        learning_rate=float(opt.get("lr", 1e-3)),
        beta_1=float(opt.get("beta1", 0.9)),
        beta_2=float(opt.get("beta2", 0.999)),
        epsilon=float(opt.get("epsilon", 1e-7)),
    )
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(optimizer=adam, loss="binary_crossentropy", jit_compile=jit,
                  steps_per_execution=args.steps_per_execution)

    steps = args.steps or int(t.get("epochs", 1)) * (n_train // batch)
    if steps < 2:
        raise SystemExit(f"{n_train} training rows make {steps} steps of {batch}; need 2 or more")

    # Input pipeline alone.
    it = iter(pipeline())
    next(it)
    t0 = time.time()
    for _ in range(steps - 1):
        next(it)
    input_only = (steps - 1) * batch / (time.time() - t0)

    # Training fed from the shards; the first step (graph tracing) is not timed, like Kiln's
    # fit pass.
    ds = pipeline()
    model.fit(ds.take(1), verbose=0)
    t0 = time.time()
    model.fit(ds, steps_per_epoch=steps - 1, epochs=1, verbose=0)
    from_shards = (steps - 1) * batch / (time.time() - t0)

    # The model step alone: 64 ready batches in memory, repeated.
    cached = pipeline().take(64).cache()
    for _ in cached:  # fills the in-memory cache; a complete pass makes later passes use it
        pass
    ready = cached.repeat()
    t0 = time.time()
    model.fit(ready, steps_per_epoch=args.model_step_steps, epochs=1, verbose=0)
    model_step = args.model_step_steps * batch / (time.time() - t0)

    print(json.dumps({
        "framework": f"tensorflow {tf.__version__} / keras {tf.keras.__version__}",
        "jit_compile": args.jit_compile,
        "steps_per_execution": args.steps_per_execution,
        "threads": os.cpu_count(),
        "train_rows": n_train,
        "held_out_rows": int(len(held_keys)),
        "steps": steps,
        "batch_size": batch,
        "setup_seconds": setup_seconds,
        "from_shards": {"examples_per_sec": from_shards},
        "input_only": {"examples_per_sec": input_only},
        "model_step": {"examples_per_sec": model_step, "steps": args.model_step_steps},
        "input_pipeline": "TFRecordDataset(num_parallel_reads=AUTOTUNE) -> shuffle(16384) of serialized "
                          "records -> batch(4096) -> map(parse_example, split, features; AUTOTUNE) -> "
                          f"rebatch({batch}) -> prefetch(AUTOTUNE)",
    }))


if __name__ == "__main__":
    main()
