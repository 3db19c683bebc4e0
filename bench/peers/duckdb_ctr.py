"""The example job (shared/specs/daily_ctr.md) in DuckDB SQL, for `kiln bench features --peers`.

Writes examples.parquet (ordered by event_id), user_features.parquet and item_features.parquet
to --out and prints {"engine", "rows": {table: n}, "seconds"} as JSON. DuckDB uses all cores.
Command line: common_args.py.
"""

import json
import os
import time

import duckdb

from common_args import input_files, parse


def main():
    a = parse(__doc__)
    t0 = time.perf_counter()
    files = input_files(a.events, a.day)
    d = a.day.isoformat()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet([{file_list}])")
    d0 = f"TIMESTAMPTZ '{d} 00:00:00+00'"
    d1 = f"({d0} - INTERVAL 1 DAY)"
    d7 = f"({d0} - INTERVAL 7 DAY)"
    d_end = f"({d0} + INTERVAL 1 DAY)"

    def window(w, cond):
        f = f"FILTER (WHERE {cond})" if cond else ""
        fa = f"AND {cond}" if cond else ""
        return f"""
          count(*) FILTER (WHERE event_type = 'view' {fa})     AS u_views_{w},
          count(*) FILTER (WHERE event_type = 'click' {fa})    AS u_clicks_{w},
          count(*) FILTER (WHERE event_type = 'cart' {fa})     AS u_carts_{w},
          count(*) FILTER (WHERE event_type = 'purchase' {fa}) AS u_purchases_{w},
          CASE WHEN count(*) FILTER (WHERE event_type = 'view' {fa}) = 0 THEN NULL
               ELSE (count(*) FILTER (WHERE event_type = 'click' {fa}))::DOUBLE
                  / (count(*) FILTER (WHERE event_type = 'view' {fa}))::DOUBLE END AS u_ctr_{w},
          coalesce(sum(price) FILTER (WHERE event_type = 'purchase' {fa}), 0.0)::DOUBLE
                                                               AS u_spend_{w},
          count(DISTINCT item_id) {f}                          AS u_distinct_items_{w},
          avg(dwell_ms) {f}                                    AS u_avg_dwell_{w}"""

    con.execute(f"""
        CREATE TEMP TABLE user_features AS
        SELECT user_id, {window('1d', f'ts >= {d1}')}, {window('7d', '')}
        FROM events WHERE ts >= {d7} AND ts < {d0}
        GROUP BY user_id""")
    con.execute(f"""
        CREATE TEMP TABLE item_features AS
        SELECT item_id,
          count(*) FILTER (WHERE event_type = 'view')  AS i_views_7d,
          count(*) FILTER (WHERE event_type = 'click') AS i_clicks_7d,
          CASE WHEN count(*) FILTER (WHERE event_type = 'view') = 0 THEN NULL
               ELSE (count(*) FILTER (WHERE event_type = 'click'))::DOUBLE
                  / (count(*) FILTER (WHERE event_type = 'view'))::DOUBLE END AS i_ctr_7d
        FROM events WHERE ts >= {d7} AND ts < {d0}
        GROUP BY item_id""")
    ucols = []
    for w in ("1d", "7d"):
        ucols += [
            f"coalesce(u.u_views_{w}, 0)::BIGINT AS u_views_{w}",
            f"coalesce(u.u_clicks_{w}, 0)::BIGINT AS u_clicks_{w}",
            f"coalesce(u.u_carts_{w}, 0)::BIGINT AS u_carts_{w}",
            f"coalesce(u.u_purchases_{w}, 0)::BIGINT AS u_purchases_{w}",
            f"u.u_ctr_{w}",
            f"coalesce(u.u_spend_{w}, 0.0) AS u_spend_{w}",
            f"coalesce(u.u_distinct_items_{w}, 0)::BIGINT AS u_distinct_items_{w}",
            f"u.u_avg_dwell_{w}",
        ]
    examples = f"""
        WITH views AS (
          SELECT event_id, user_id, item_id, ts, device, city, price, dwell_ms
          FROM events WHERE event_type = 'view' AND ts >= {d0} AND ts < {d_end}
        ),
        clicks AS (
          SELECT user_id, item_id, ts FROM events
          WHERE event_type = 'click' AND ts > {d0}
            AND ts <= {d_end} + INTERVAL 30 MINUTE
        ),
        labels AS (
          SELECT DISTINCT v.event_id FROM views v JOIN clicks c
            ON c.user_id = v.user_id AND c.item_id = v.item_id
           AND c.ts > v.ts AND c.ts <= v.ts + INTERVAL 30 MINUTE
        )
        SELECT v.event_id, v.user_id, v.item_id, v.ts,
          ((epoch_us(v.ts) // 3600000000) % 24)::INTEGER AS hour,
          v.device, v.city, v.price, v.dwell_ms,
          {', '.join(ucols)},
          coalesce(i.i_views_7d, 0)::BIGINT AS i_views_7d,
          coalesce(i.i_clicks_7d, 0)::BIGINT AS i_clicks_7d,
          i.i_ctr_7d,
          (l.event_id IS NOT NULL)::INTEGER AS label
        FROM views v
        LEFT JOIN user_features u USING (user_id)
        LEFT JOIN item_features i USING (item_id)
        LEFT JOIN labels l USING (event_id)
        ORDER BY v.event_id"""
    opts = "(FORMAT parquet, COMPRESSION zstd)"
    rows = {}
    for name, query in [
        ("examples", examples),
        ("user_features", "SELECT * FROM user_features"),
        ("item_features", "SELECT * FROM item_features"),
    ]:
        path = os.path.join(a.out, f"{name}.parquet")
        # COPY answers with the number of rows it wrote.
        rows[name] = con.execute(f"COPY ({query}) TO '{path}' {opts}").fetchone()[0]
    print(json.dumps({"engine": "duckdb", "version": duckdb.__version__, "rows": rows,
                      "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
