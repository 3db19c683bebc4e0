#!/usr/bin/env python3
"""Kiln's statistics and drift against TensorFlow Data Validation (TFDV) 1.16.1.

Run by bench/tfdv/run.sh (which makes the data and the Kiln side); by hand:

    python compare.py --baseline WORK/2026-11-19 --current WORK/2026-11-20

Each DAY directory holds what run.sh wrote for one run date of the example job:

    DAY/examples/      the committed dataset (`kiln features --out DAY`): its _manifest.json
                       lists the TFRecord (gzip) and Parquet shards of the same rows
    DAY/kiln.json      `kiln stats DAY/examples --json --tfdv DAY/kiln.pb`
    DAY/kiln.pb        Kiln's `DatasetFeatureStatisticsList` export
    CURRENT/drift.json `kiln stats CURRENT/examples --baseline BASELINE/examples --json`

Three sources are compared for every column of both days:

* **kiln**: Kiln's statistics, computed in the write pass (`_stats.json`, and the exported
  protobuf, read back here with TFDV's own loader);
* **tfdv**: `tfdv.generate_statistics_from_tfrecord` over the dataset's TFRecord shards
  (gzip, found by TFDV from the `.gz` suffix; Beam's DirectRunner);
* **exact**: numpy over the dataset's Parquet shards (the same rows): exact counts, min, max,
  mean, population standard deviation, ranks, value counts.

Tolerances:

* counts, nulls, zeros, distinct strings (TFDV), top-value counts (TFDV): equal;
* min / max / mean / std_dev: Kiln against exact, 1e-9 relative. TFDV against Kiln: integer
  columns 1e-9 relative; float columns hold float32 in a TFRecord (`float_list`), so TFDV sees
  each value rounded to 24 bits: min / max must equal Kiln's rounded to float32, mean and
  std_dev must match the exact figures of the float32-rounded values (1e-9 relative), and
  differ from Kiln's by at most 2^-23 relative;
* quantiles: each of Kiln's 11 quantiles must lie within its stated normalized rank error
  (`rank_error` in `_stats.json`: 1.33%, KLL k = 200, 0 while exact) of its target rank in the
  exact data; TFDV's quantile-histogram boundaries are checked the same way against TFDV's
  own bound (StatsOptions.epsilon = 0.01);
* distinct strings: Kiln's HyperLogLog within 5% (3 standard errors) of the exact count;
* top values: Kiln's counts within [exact, exact + top_values_max_error], the same values in
  the same order as TFDV's (ties in either order);
* avg length: exact (1e-9) for Kiln, float32 (1e-6) for TFDV.

Then the schema: `tfdv.infer_schema` on Kiln's protobuf and on TFDV's statistics of the
baseline day must give the same schema, and `tfdv.validate_statistics` of each day's
statistics (both sources) against each schema must give the same anomalies.

Then drift (the current day was generated with `--plant device-mix@DAY`): TFDV's drift
comparators (`infinity_norm` on string features, `jensen_shannon_divergence` on numeric ones)
on TFDV's statistics and on Kiln's protobufs, and Kiln's own `kiln stats --baseline` drift;
the flagged columns (value above `--string-threshold` / `--numeric-threshold`) must be the same.

Prints a table per part and a summary; exits 1 on any mismatch (named: column, check, both
values), 2 on a usage or input error.
"""

import argparse
import glob
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow_data_validation as tfdv  # noqa: E402
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2  # noqa: E402

F32_REL = 2.0**-23  # float32 rounding of the TFRecord values (2 ulp, relative)
REL = 1e-9
TFDV_EPSILON = 0.01  # tfdv.StatsOptions().epsilon: TFDV's own quantile error bound
HLL_TOL = 0.05  # 3 standard errors of HLL lg k = 12 (1.04 / sqrt(4096) = 1.6%)


class Table:
    """Rows of (part, column, check, kiln, tfdv, exact, tolerance, ok)."""

    def __init__(self):
        self.rows = []

    def add(self, part, column, check, kiln, tfdv_v, exact, tol, ok):
        self.rows.append(
            dict(part=part, column=column, check=check, kiln=kiln, tfdv=tfdv_v, exact=exact,
                 tol=tol, ok=bool(ok)))
        return ok

    def failures(self):
        return [r for r in self.rows if not r["ok"]]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or (1e-4 <= abs(v) < 1e7):
            return f"{v:.10g}"
        return f"{v:.6e}"
    return str(v)


def close(a, b, rel=REL, abs_tol=0.0):
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_tol


def f32(x):
    return float(np.float32(x))


# ---------------------------------------------------------------------------------------------
# inputs


def load_day(day):
    ds = os.path.join(day, "examples")
    with open(os.path.join(ds, "_manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(day, "kiln.json")) as f:
        kiln = json.load(f)["statistics"]
    kiln_pb = tfdv.load_stats_binary(os.path.join(day, "kiln.pb"))
    shards = {"tfrecord": [], "parquet": []}
    for s in manifest["shards"]:
        shards[s["format"]].append(os.path.join(ds, s["path"]))
    if not shards["tfrecord"] or not shards["parquet"]:
        raise SystemExit(f"{ds}: the manifest must list both TFRecord and Parquet shards")
    return dict(name=os.path.basename(day.rstrip("/")), dir=day, manifest=manifest, kiln=kiln,
                kiln_pb=kiln_pb, shards=shards)


def tfdv_statistics(day):
    """TFDV's statistics over the day's TFRecord shards (exactly the manifest's list)."""
    tf_shards = sorted(day["shards"]["tfrecord"])
    dirs = {os.path.dirname(p) for p in tf_shards}
    suffixes = {re.sub(r"^part-\d+-of-\d+", "", os.path.basename(p)) for p in tf_shards}
    if len(dirs) != 1 or len(suffixes) != 1:
        raise SystemExit(f"unexpected shard layout: {tf_shards[:3]}")
    pattern = os.path.join(dirs.pop(), "part-*" + suffixes.pop())
    if sorted(glob.glob(pattern)) != tf_shards:
        raise SystemExit(f"{pattern} does not match exactly the manifest's TFRecord shards")
    t = time.time()
    stats = tfdv.generate_statistics_from_tfrecord(data_location=pattern)
    return stats, pattern, time.time() - t


def exact_columns(day):
    """Column name -> dict of exact figures, from the Parquet shards."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(day["shards"]["parquet"]))
    out = {"__rows__": table.num_rows}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        t = col.type
        nulls = col.null_count
        e = dict(count=len(col) - nulls, nulls=nulls)
        valid = pc.drop_null(col)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            vc = pc.value_counts(valid).to_pylist()
            e["kind"] = "string"
            e["counts"] = {d["values"]: d["counts"] for d in vc}
            e["distinct"] = len(vc)
            lengths = pc.binary_length(valid).to_numpy(zero_copy_only=False)
            e["avg_length"] = float(lengths.mean()) if len(lengths) else 0.0
        elif (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
              or pa.types.is_temporal(t)):
            if pa.types.is_temporal(t):
                valid = valid.cast(pa.int64())
            elif pa.types.is_boolean(t):
                valid = valid.cast(pa.int8())
            x = valid.to_numpy(zero_copy_only=False).astype(np.float64)
            finite = x[np.isfinite(x)]
            e["kind"] = "numeric"
            e["float"] = pa.types.is_floating(t)
            e["sorted"] = np.sort(finite)
            x32 = finite.astype(np.float32).astype(np.float64) if e["float"] else finite
            e["sorted32"] = np.sort(x32)
            for key, arr in (("", finite), ("32", x32)):
                e["min" + key] = float(arr.min()) if len(arr) else None
                e["max" + key] = float(arr.max()) if len(arr) else None
                e["mean" + key] = float(arr.mean()) if len(arr) else None
                e["std" + key] = float(arr.std()) if len(arr) else None
            e["zeros"] = int((finite == 0).sum())
        else:
            e["kind"] = "other"
        out[name] = e
    return out


def feature_map(stats):
    out = {}
    for f in stats.datasets[0].features:
        name = f.name if f.HasField("name") else ".".join(f.path.step)
        out[name] = f
    return out


def common_of(f):
    kind = f.WhichOneof("stats")
    return getattr(f, kind).common_stats


def quantile_boundaries(num_stats):
    for h in num_stats.histograms:
        if h.type == statistics_pb2.Histogram.QUANTILES and h.buckets:
            return [h.buckets[0].low_value] + [b.high_value for b in h.buckets]
    return []


def rank_error(sorted_vals, value, target):
    """Distance of `target` (a normalized rank) from the ranks `value` takes in the data."""
    n = len(sorted_vals)
    lo = np.searchsorted(sorted_vals, value, side="left") / n
    hi = np.searchsorted(sorted_vals, value, side="right") / n
    if lo <= target <= hi:
        return 0.0
    return float(min(abs(lo - target), abs(hi - target)))


# ---------------------------------------------------------------------------------------------
# part 1: statistics


def compare_statistics(day, tstats, exact, table):
    part = f"stats {day['name']}"
    kiln = day["kiln"]
    kcols = {c["name"]: c for c in kiln["columns"]}
    kpb = feature_map(day["kiln_pb"])
    tf = feature_map(tstats)
    rows = exact["__rows__"]
    tds = tstats.datasets[0]
    table.add(part, "*", "rows", kiln["num_rows"], tds.num_examples, rows, "equal",
              kiln["num_rows"] == tds.num_examples == rows
              == day["kiln_pb"].datasets[0].num_examples)
    for name, kc in kcols.items():
        e = exact.get(name)
        if e is None or name not in tf or name not in kpb:
            table.add(part, name, "present", name in kpb, name in tf, e is not None, "all",
                      False)
            continue
        tfeat, kfeat = tf[name], kpb[name]
        tcommon, kcommon = common_of(tfeat), common_of(kfeat)
        table.add(part, name, "count", kc["count"], tcommon.num_non_missing, e["count"],
                  "equal", kc["count"] == tcommon.num_non_missing == e["count"]
                  == kcommon.num_non_missing)
        table.add(part, name, "nulls", kc["null_count"], tcommon.num_missing, e["nulls"],
                  "equal", kc["null_count"] == tcommon.num_missing == e["nulls"]
                  == kcommon.num_missing)
        want_type = {"numeric": None, "string": tfdv_type("STRING")}[kc["kind"]] \
            if kc["kind"] in ("numeric", "string") else None
        if kc["kind"] == "numeric":
            compare_numeric(part, name, kc, kfeat, tfeat, e, table)
        elif kc["kind"] == "string":
            compare_string(part, name, kc, kfeat, tfeat, e, table)
        table.add(part, name, "type", type_name(kfeat.type), type_name(tfeat.type), None,
                  "equal", kfeat.type == tfeat.type
                  and (want_type is None or kfeat.type == want_type))


def tfdv_type(name):
    return statistics_pb2.FeatureNameStatistics.Type.Value(name)


def type_name(v):
    return statistics_pb2.FeatureNameStatistics.Type.Name(v)


def compare_numeric(part, name, kc, kfeat, tfeat, e, table):
    kn, kns, tns = kc["numeric"], kfeat.num_stats, tfeat.num_stats
    is_float = e["float"]
    # Kiln's protobuf carries the same figures as its _stats.json.
    pb_same = (kns.min == kn["min"] and kns.max == kn["max"] and kns.mean == kn["mean"]
               and kns.std_dev == kn["std_dev"] and kns.num_zeros == kn["zeros"])
    table.add(part, name, "protobuf = _stats.json", "min max mean std zeros", None, None,
              "equal", pb_same)
    for key, tkey, ekey in (("min", "min", "min"), ("max", "max", "max")):
        k, t = kn[key], getattr(tns, tkey)
        want_t = f32(k) if is_float else k
        table.add(part, name, key, k, t, e[ekey],
                  "kiln=exact, tfdv=f32(kiln)" if is_float else "1e-9 rel",
                  close(k, e[ekey]) and close(t, want_t))
    for key, tkey, ekey in (("mean", "mean", "mean"), ("std_dev", "std_dev", "std")):
        k, t = kn[key], getattr(tns, tkey)
        if is_float:
            ok = close(k, e[ekey]) and close(t, e[ekey + "32"]) and close(k, t, rel=F32_REL)
            tol = "kiln=exact, tfdv=exact(f32), |kiln-tfdv|<=2^-23 rel"
        else:
            ok = close(k, e[ekey]) and close(t, k)
            tol = "1e-9 rel"
        table.add(part, name, key, k, t, e[ekey], tol, ok)
    table.add(part, name, "zeros", kn["zeros"], tns.num_zeros, e["zeros"], "equal",
              kn["zeros"] == tns.num_zeros == e["zeros"])
    # Quantiles: Kiln's 11 against the exact ranks, within its stated rank error.
    bound = kn["rank_error"]
    qs = kn["quantiles"]
    n_q = len(qs) - 1
    kerr = max(rank_error(e["sorted"], q, i / n_q) for i, q in enumerate(qs)) if qs else 0.0
    tq = quantile_boundaries(tns)
    n_t = len(tq) - 1
    terr = max(rank_error(e["sorted32"], q, i / n_t) for i, q in enumerate(tq)) if tq else None
    table.add(part, name, f"quantile rank error (kiln <= {bound})", kerr, terr, 0.0,
              f"kiln <= {bound}, tfdv <= {TFDV_EPSILON}",
              kerr <= bound + 1e-12 and (terr is None or terr <= TFDV_EPSILON + 1e-12))
    # The medians, in ranks of the exact data.
    km, tm = kns.median, tns.median
    table.add(part, name, "median (rank error)", f"{fmt(km)} ({rank_error(e['sorted'], km, 0.5):.4f})",
              f"{fmt(tm)} ({rank_error(e['sorted32'], tm, 0.5):.4f})", None,
              f"kiln <= {bound}, tfdv <= {TFDV_EPSILON}",
              rank_error(e["sorted"], km, 0.5) <= bound + 1e-12
              and rank_error(e["sorted32"], tm, 0.5) <= TFDV_EPSILON + 1e-12)


def compare_string(part, name, kc, kfeat, tfeat, e, table):
    ks, kss, tss = kc["string"], kfeat.string_stats, tfeat.string_stats
    exact_d = e["distinct"]
    table.add(part, name, "distinct", ks["distinct"], tss.unique, exact_d,
              f"kiln within {HLL_TOL:.0%}, tfdv equal",
              abs(ks["distinct"] - exact_d) <= max(1.0, HLL_TOL * exact_d)
              and tss.unique == exact_d and kss.unique == ks["distinct"])
    table.add(part, name, "avg_length", ks["avg_length"], tss.avg_length, e["avg_length"],
              "kiln 1e-9, tfdv f32 1e-6",
              close(ks["avg_length"], e["avg_length"]) and close(tss.avg_length,
                                                                 e["avg_length"], rel=1e-6))
    max_err = ks["top_values_max_error"]
    counts = e["counts"]
    bad = []
    for v in ks["top_values"]:
        c = counts.get(v["value"], 0)
        if not c <= v["count"] <= c + max_err:
            bad.append(f"{v['value']}: kiln {v['count']} exact {c}")
    tbad = [f"{t.value}: tfdv {t.frequency} exact {counts.get(t.value, 0)}"
            for t in tss.top_values if t.frequency != counts.get(t.value, 0)]
    table.add(part, name, f"top {len(ks['top_values'])} counts",
              "; ".join(bad) or "all within", "; ".join(tbad) or "all equal", None,
              f"kiln in [exact, exact+{max_err}], tfdv equal", not bad and not tbad)
    # Same values, same order (a run of equal counts may come in either order).
    kl = [(v["count"], v["value"]) for v in ks["top_values"]]
    tl = [(int(t.frequency), t.value) for t in tss.top_values][:len(kl)]
    same = len(kl) == len(tl) and group_ties(kl) == group_ties(tl)
    table.add(part, name, "top values order", ",".join(v for _, v in kl[:5]) + ",...",
              ",".join(v for _, v in tl[:5]) + ",...", None, "same (ties any order)", same)
    pb_same = [(t.value, t.frequency) for t in kss.top_values] == \
        [(v["value"], float(v["count"])) for v in ks["top_values"]]
    table.add(part, name, "protobuf = _stats.json", "top values, unique", None, None, "equal",
              pb_same)


def group_ties(lst):
    groups = {}
    for c, v in lst:
        groups.setdefault(c, set()).add(v)
    return sorted((c, sorted(vs)) for c, vs in groups.items())


# ---------------------------------------------------------------------------------------------
# part 2: schema and validation


def schema_features(schema):
    doms = {d.name: list(d.value) for d in schema.string_domain}
    out = {}
    for f in schema.feature:
        p = f.presence
        desc = dict(type=f.type, min_fraction=p.min_fraction, min_count=p.min_count,
                    shape=[d.size for d in f.shape.dim],
                    value_count=(f.value_count.min, f.value_count.max)
                    if f.HasField("value_count") else None,
                    domain=f.WhichOneof("domain_info"))
        if f.HasField("domain"):
            desc["string_domain"] = sorted(doms.get(f.domain, []))
        out[f.name] = desc
    return out


def anomalies_of(anomalies):
    return {k: sorted(statistics_reason(r) for r in v.reason)
            for k, v in anomalies.anomaly_info.items()}


def statistics_reason(r):
    return anomalies_pb2.AnomalyInfo.Type.Name(r.type)


def compare_schema(base, cur, tstats, table):
    part = "schema"
    sk = tfdv.infer_schema(base["kiln_pb"])
    st = tfdv.infer_schema(tstats[base["name"]])
    fk, ft = schema_features(sk), schema_features(st)
    for name in sorted(set(fk) | set(ft)):
        a, b = fk.get(name), ft.get(name)
        if a == b:
            table.add(part, name, "infer_schema", "same", "same", None, "equal", True)
            continue
        diff = []
        for key in sorted(set(a or {}) | set(b or {})):
            va, vb = (a or {}).get(key), (b or {}).get(key)
            if va != vb:
                if key == "string_domain" and va is not None and vb is not None:
                    diff.append(f"string_domain: kiln {len(va)} values, tfdv {len(vb)} values "
                                f"(tfdv only: {sorted(set(vb) - set(va))}, "
                                f"kiln only: {sorted(set(va) - set(vb))})")
                else:
                    diff.append(f"{key}: kiln {va} tfdv {vb}")
        table.add(part, name, "infer_schema", "; ".join(diff), "(see kiln column)", None,
                  "equal", False)
    schemas = {"kiln-inferred": sk, "tfdv-inferred": st}
    for day in (base, cur):
        for sname, schema in schemas.items():
            ak = anomalies_of(tfdv.validate_statistics(day["kiln_pb"], schema))
            at = anomalies_of(tfdv.validate_statistics(tstats[day["name"]], schema))
            for col in sorted(set(ak) | set(at)) or ["*"]:
                k, t = ak.get(col, []), at.get(col, [])
                table.add(f"validate {day['name']}", col, f"anomalies vs {sname} schema",
                          ",".join(k) or "none", ",".join(t) or "none", None, "same", k == t)
    return sk, st


# ---------------------------------------------------------------------------------------------
# part 3: drift


DRIFT_RE = re.compile(r"between current and previous is ([0-9.eE+-]+)")


def tfdv_drift(cur_stats, base_stats):
    """Column -> TFDV's drift value: every comparator at a tiny threshold, values parsed
    from the anomaly descriptions (TFDV reports 6 significant digits)."""
    schema = tfdv.infer_schema(base_stats)
    measures = {}
    for f in schema.feature:
        if f.type == schema_pb2.BYTES:
            f.drift_comparator.infinity_norm.threshold = 1e-12
            measures[f.name] = "l_infinity"
        elif f.type in (schema_pb2.INT, schema_pb2.FLOAT):
            f.drift_comparator.jensen_shannon_divergence.threshold = 1e-12
            measures[f.name] = "jensen_shannon"
    anomalies = tfdv.validate_statistics(cur_stats, schema, previous_statistics=base_stats)
    values = {name: 0.0 for name in measures}
    for col, info in anomalies.anomaly_info.items():
        for r in info.reason:
            tname = statistics_reason(r)
            if tname in ("COMPARATOR_L_INFTY_HIGH", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"):
                m = DRIFT_RE.search(r.description)
                if not m:
                    raise SystemExit(f"cannot read TFDV's drift value from: {r.description}")
                values[col] = float(m.group(1))
    return measures, values


def compare_drift(base, cur, tstats, kiln_drift, args, table):
    part = "drift"
    tm, tv = tfdv_drift(tstats[cur["name"]], tstats[base["name"]])
    km_, kv_on_kiln = tfdv_drift(cur["kiln_pb"], base["kiln_pb"])
    kv = {d["column"]: d["value"] for d in kiln_drift}
    kmeasure = {d["column"]: d["measure"] for d in kiln_drift}
    flagged = {"kiln": [], "tfdv": [], "tfdv-on-kiln": []}
    rows = []
    for col in [c["name"] for c in cur["kiln"]["columns"]]:
        if col not in kv and col not in tv:
            continue
        measure = tm.get(col) or kmeasure.get(col)
        thr = args.string_threshold if measure == "l_infinity" else args.numeric_threshold
        k, t, tk = kv.get(col), tv.get(col), kv_on_kiln.get(col)
        fk = k is not None and k > thr
        ft = t is not None and t > thr
        ftk = tk is not None and tk > thr
        for who, f in (("kiln", fk), ("tfdv", ft), ("tfdv-on-kiln", ftk)):
            if f:
                flagged[who].append(col)
        rows.append((col, measure, thr, k, t, tk))
        # Kiln's drift is TFDV's formula on Kiln's histograms: TFDV on Kiln's protobuf must
        # give the same number (TFDV prints 6 significant digits).
        same_formula = k is not None and tk is not None and close(k, tk, rel=1e-5, abs_tol=1e-6)
        table.add(part, col, f"{measure} > {thr}",
                  f"{fmt(k)} {'FLAG' if fk else 'ok'}", f"{fmt(t)} {'FLAG' if ft else 'ok'}",
                  f"tfdv-on-kiln {fmt(tk)}", "flag same; kiln = tfdv-on-kiln (1e-5)",
                  fk == ft == ftk and same_formula)
    return flagged, rows


# ---------------------------------------------------------------------------------------------


def print_table(table, verbose):
    print()
    print(f"{'part':<18} {'column':<20} {'check':<42} {'kiln':>24} {'tfdv':>24} {'exact':>20}  ok")
    for r in table.rows:
        if not verbose and r["ok"] and r["part"].startswith("stats") and r["check"] in (
                "protobuf = _stats.json", "type", "top values order"):
            continue
        print(f"{r['part']:<18} {r['column']:<20} {r['check']:<42} {fmt(r['kiln']):>24} "
              f"{fmt(r['tfdv']):>24} {fmt(r['exact']):>20}  {'ok' if r['ok'] else 'MISMATCH'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the clean day's directory")
    ap.add_argument("--current", required=True,
                    help="the planted day's directory (with drift.json)")
    ap.add_argument("--string-threshold", type=float, default=0.1,
                    help="L-infinity threshold of string columns (default 0.1)")
    ap.add_argument("--numeric-threshold", type=float, default=0.1,
                    help="Jensen-Shannon threshold of numeric columns (default 0.1)")
    ap.add_argument("--summary", help="write the summary as JSON to this path")
    ap.add_argument("--verbose", action="store_true", help="print every row")
    args = ap.parse_args()

    t0 = time.time()
    base, cur = load_day(args.baseline), load_day(args.current)
    with open(os.path.join(args.current, "drift.json")) as f:
        kiln_drift = json.load(f)["drift"]
    table = Table()
    timings = {}
    tstats = {}
    for day in (base, cur):
        stats, pattern, secs = tfdv_statistics(day)
        tstats[day["name"]] = stats
        timings[f"tfdv generate_statistics {day['name']}"] = secs
        print(f"TFDV statistics of {pattern}: {stats.datasets[0].num_examples} examples, "
              f"{secs:.1f} s", flush=True)
        t = time.time()
        exact = exact_columns(day)
        timings[f"exact (numpy) {day['name']}"] = time.time() - t
        compare_statistics(day, stats, exact, table)
    t = time.time()
    compare_schema(base, cur, tstats, table)
    flagged, _ = compare_drift(base, cur, tstats, kiln_drift, args, table)
    timings["schema + validation + drift"] = time.time() - t
    print_table(table, args.verbose)

    fails = table.failures()
    by_part = {}
    for r in table.rows:
        p = by_part.setdefault(r["part"], [0, 0])
        p[0] += 1
        p[1] += 0 if r["ok"] else 1
    print()
    print("summary:")
    for p, (n, bad) in by_part.items():
        print(f"  {p:<18} {n:>4} checks, {bad} mismatches")
    print(f"  drift thresholds: L-infinity > {args.string_threshold}, "
          f"Jensen-Shannon > {args.numeric_threshold}")
    for who, cols in flagged.items():
        print(f"  flagged by {who:<13} {', '.join(cols) or '(none)'}")
    same = flagged["kiln"] == flagged["tfdv"]
    print(f"  flagged columns {'the same' if same else 'DIFFER'}")
    for k, v in timings.items():
        print(f"  time {k}: {v:.1f} s")
    print(f"  compare.py total {time.time() - t0:.1f} s")
    if fails:
        print(f"\n{len(fails)} MISMATCH(ES):")
        for r in fails:
            print(f"  [{r['part']}] {r['column']}: {r['check']}: kiln {fmt(r['kiln'])}, "
                  f"tfdv {fmt(r['tfdv'])}, exact {fmt(r['exact'])} (tolerance: {r['tol']})")
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(dict(parts=by_part, flagged=flagged, timings=timings,
                           mismatches=fails, tfdv_version=tfdv.__version__), f, indent=1,
                      default=str)
    if fails or not same:
        sys.exit(1)
    print("\nall comparisons within tolerance; TFDV and Kiln flag the same columns")


if __name__ == "__main__":
    main()
