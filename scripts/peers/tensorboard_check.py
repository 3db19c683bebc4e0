#!/usr/bin/env python3
"""Load the TensorBoard event files `kiln train` wrote with TensorBoard's own EventAccumulator
and compare them with what `kiln train` reported.

Usage: python3 scripts/peers/tensorboard_check.py MODEL_DIR EXPECTED_JSON

EXPECTED_JSON (written by the Rust test jobs/tests/observability.rs) holds:
  steps         [int]    the logged steps, in order (from kiln train's stderr)
  loss          [float]  the loss printed for each of them (5 decimals)
  final_loss    float    `train_loss` of `kiln train --json`
  final_step    int      `steps` of `kiln train --json`
Held-out metrics are compared with MODEL_DIR/metrics.json.
Exits non-zero, naming the first mismatch; prints "tensorboard_check: ok" on success.
"""
import glob
import json
import math
import os
import struct
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402


def fail(msg):
    print(f"tensorboard_check: MISMATCH: {msg}", file=sys.stderr)
    sys.exit(1)


def f32(x):
    """x rounded to a 32-bit float (what `simple_value` holds)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    model_dir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        want = json.load(f)
    logs = os.path.join(model_dir, "logs")
    files = sorted(glob.glob(os.path.join(logs, "events.out.tfevents.*")))
    if len(files) != 1:
        fail(f"expected one event file in {logs}, found {files}")
    name = os.path.basename(files[0])
    parts = name.split(".")
    # events.out.tfevents.<secs>.<host...>.<pid>.kiln
    if parts[-1] != "kiln" or not parts[3].isdigit() or not parts[-2].isdigit():
        fail(f"event file name {name}")

    acc = event_accumulator.EventAccumulator(logs, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    # TensorBoard read the file_version event ("brain.Event:2"); anything else would have
    # been reported as an older or unknown file version.
    if acc.file_version != 2.0:
        fail(f"file_version {acc.file_version}, expected 2 (brain.Event:2)")
    tags = set(acc.Tags()["scalars"])
    need = {"train/loss", "train/learning_rate", "train/examples_per_sec", "eval/auc", "eval/log_loss"}
    if not need <= tags:
        fail(f"scalar tags {sorted(tags)} lack {sorted(need - tags)}")

    loss = acc.Scalars("train/loss")
    steps = [e.step for e in loss]
    if steps != want["steps"]:
        fail(f"train/loss steps {steps}, kiln train logged {want['steps']}")
    for e, printed in zip(loss, want["loss"]):
        if abs(e.value - printed) > 0.6e-5 + 1e-7 * abs(printed):
            fail(f"train/loss at step {e.step}: {e.value} in the event file, {printed} on stderr")
    if loss[-1].value != f32(want["final_loss"]):
        fail(f"last train/loss {loss[-1].value}, kiln train --json train_loss {want['final_loss']}")
    for tag in ("train/learning_rate", "train/examples_per_sec"):
        got = acc.Scalars(tag)
        if [e.step for e in got] != want["steps"]:
            fail(f"{tag} steps {[e.step for e in got]}")
        if not all(math.isfinite(e.value) and e.value > 0 for e in got):
            fail(f"{tag} values {[e.value for e in got]}")
    wall = [e.wall_time for e in loss]
    if wall != sorted(wall):
        fail(f"wall times not increasing: {wall}")

    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    for tag, key in (("eval/auc", "auc"), ("eval/log_loss", "logloss")):
        got = acc.Scalars(tag)
        if len(got) != 1:
            fail(f"{tag}: {len(got)} events, expected 1")
        if got[0].step != want["final_step"]:
            fail(f"{tag} at step {got[0].step}, the run ended at step {want['final_step']}")
        if got[0].value != f32(metrics[key]):
            fail(f"{tag} {got[0].value} in the event file, metrics.json {key} {metrics[key]}")
    print(f"tensorboard_check: ok ({len(loss)} logged steps, {len(tags)} tags, {name})")


if __name__ == "__main__":
    main()
