"""Command line shared by the peer implementations of the example job (duckdb_ctr.py,
polars_ctr.py): the events directory (Kiln's `gen events` layout, `dt=YYYY-MM-DD/*.parquet`),
the run date, and the output directory."""

import argparse
import datetime as dt
import glob
import os


def parse(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("events", help="events directory: dt=YYYY-MM-DD/*.parquet partitions")
    p.add_argument("--date", required=True, help="run date D (YYYY-MM-DD)")
    p.add_argument("--out", required=True, help="output directory (created)")
    a = p.parse_args()
    a.day = dt.date.fromisoformat(a.date)
    os.makedirs(a.out, exist_ok=True)
    return a


def input_files(events, day):
    """The partitions Kiln's job reads (days = [-7, 1]: dt = D-7 .. D+1)."""
    files = []
    for k in range(-7, 2):
        d = day + dt.timedelta(days=k)
        files += sorted(glob.glob(os.path.join(events, f"dt={d.isoformat()}", "*.parquet")))
    if not files:
        raise SystemExit(f"no Parquet files under {events}/dt=... for {day} -7..+1 days")
    return files
