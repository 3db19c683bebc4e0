"""The example job (shared/specs/daily_ctr.md) with the Polars lazy API and its streaming
engine, for `kiln bench features --peers`.

Writes examples.parquet (ordered by event_id), user_features.parquet and item_features.parquet
to --out and prints {"engine", "rows": {table: n}, "seconds"} as JSON. Polars uses all cores.
Command line: common_args.py.
"""

import datetime as dt
import json
import os
import time

import polars as pl

from common_args import input_files, parse

# `collect(engine=...)`: "streaming" (the new streaming engine) or "in-memory"; override
# with POLARS_CTR_ENGINE to compare them.
ENGINE = os.environ.get("POLARS_CTR_ENGINE", "streaming")


def user_window(w, cond):
    """The 8 user features of window `w` over the H7 rows where `cond` holds."""
    et = pl.col("event_type")
    views = (cond & (et == "view")).sum().cast(pl.Int64)
    clicks = (cond & (et == "click")).sum().cast(pl.Int64)
    return [
        views.alias(f"u_views_{w}"),
        clicks.alias(f"u_clicks_{w}"),
        (cond & (et == "cart")).sum().cast(pl.Int64).alias(f"u_carts_{w}"),
        (cond & (et == "purchase")).sum().cast(pl.Int64).alias(f"u_purchases_{w}"),
        pl.when(views == 0).then(None)
        .otherwise(clicks.cast(pl.Float64) / views.cast(pl.Float64)).alias(f"u_ctr_{w}"),
        pl.col("price").filter(cond & (et == "purchase")).sum().fill_null(0.0)
        .cast(pl.Float64).alias(f"u_spend_{w}"),
        pl.col("item_id").filter(cond).n_unique().cast(pl.Int64).alias(f"u_distinct_items_{w}"),
        pl.col("dwell_ms").filter(cond).mean().cast(pl.Float64).alias(f"u_avg_dwell_{w}"),
    ]


def main():
    a = parse(__doc__)
    t0 = time.perf_counter()
    utc = dt.timezone.utc
    d0 = dt.datetime.combine(a.day, dt.time(), utc)
    d1, d7, d_end = d0 - dt.timedelta(days=1), d0 - dt.timedelta(days=7), d0 + dt.timedelta(days=1)
    half_hour = dt.timedelta(minutes=30)
    events = pl.scan_parquet(input_files(a.events, a.day))
    ts, et = pl.col("ts"), pl.col("event_type")
    h7 = events.filter((ts >= d7) & (ts < d0))
    users = h7.group_by("user_id").agg(user_window("1d", ts >= d1) + user_window("7d", pl.lit(True)))
    iv = (et == "view").sum().cast(pl.Int64)
    ic = (et == "click").sum().cast(pl.Int64)
    items = h7.group_by("item_id").agg(
        iv.alias("i_views_7d"),
        ic.alias("i_clicks_7d"),
        pl.when(iv == 0).then(None).otherwise(ic.cast(pl.Float64) / iv.cast(pl.Float64))
        .alias("i_ctr_7d"),
    )
    users, items = pl.collect_all([users, items], engine=ENGINE)

    views = events.filter((et == "view") & (ts >= d0) & (ts < d_end)).select(
        "event_id", "user_id", "item_id", "ts", ts.dt.hour().cast(pl.Int32).alias("hour"),
        "device", "city", "price", "dwell_ms",
    )
    clicks = events.filter((et == "click") & (ts > d0) & (ts <= d_end + half_hour)).select(
        "user_id", "item_id", ts.alias("click_ts"),
    )
    labels = (
        views.select("event_id", "user_id", "item_id", "ts")
        .join(clicks, on=["user_id", "item_id"], how="inner")
        .filter((pl.col("click_ts") > ts) & (pl.col("click_ts") <= ts + half_hour))
        .select("event_id").unique()
        .with_columns(pl.lit(1, pl.Int32).alias("label"))
    )
    counts = [f"u_{c}_{w}" for w in ("1d", "7d")
              for c in ("views", "clicks", "carts", "purchases", "distinct_items")]
    counts += ["i_views_7d", "i_clicks_7d"]
    order = ["event_id", "user_id", "item_id", "ts", "hour", "device", "city", "price",
             "dwell_ms"]
    for w in ("1d", "7d"):
        order += [f"u_{c}_{w}" for c in ("views", "clicks", "carts", "purchases", "ctr",
                                          "spend", "distinct_items", "avg_dwell")]
    order += ["i_views_7d", "i_clicks_7d", "i_ctr_7d", "label"]
    examples = (
        views.join(users.lazy(), on="user_id", how="left")
        .join(items.lazy(), on="item_id", how="left")
        .join(labels, on="event_id", how="left")
        .with_columns(
            [pl.col(c).fill_null(0) for c in counts]
            + [pl.col("u_spend_1d").fill_null(0.0), pl.col("u_spend_7d").fill_null(0.0),
               pl.col("label").fill_null(0)]
        )
        .select(order)
        .sort("event_id")
        .collect(engine=ENGINE)
    )
    rows = {}
    for name, df in [("examples", examples), ("user_features", users),
                     ("item_features", items)]:
        df.write_parquet(os.path.join(a.out, f"{name}.parquet"), compression="zstd")
        rows[name] = df.height
    print(json.dumps({"engine": "polars", "version": pl.__version__, "polars_engine": ENGINE, "rows": rows,
                      "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
