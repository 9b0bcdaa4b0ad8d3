"""Metric ingest (idempotent upsert) and min/max downsampling for charts.

A series can hold a million points; charts need a couple of thousand. Downsampling
runs in SQL: the step range is cut into buckets and each bucket keeps its lowest and
highest point, plus the series' first and last point, so spikes and the curve's
envelope survive while the answer stays under `max_points`.

Scanning a million-point series that way takes about 0.3 s, too slow for a run page
with five of them. So ingest also keeps `metric_blocks`: the lowest and highest point
of every `BLOCK`-step slice. `chart_series` merges those (span / BLOCK rows) into
buckets, giving the same kind of envelope from a few thousand rows.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, Iterable

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from app.models import MetricBlock, MetricPoint
from app.services.events import record_change

_KEYS = text("""
WITH RECURSIVE k(key) AS (
  SELECT MIN(key) FROM metric_points WHERE run_id = :run
  UNION ALL
  SELECT (SELECT MIN(key) FROM metric_points WHERE run_id = :run AND key > k.key)
  FROM k WHERE k.key IS NOT NULL
) SELECT key FROM k WHERE key IS NOT NULL""")  # a skip scan: one index probe per key

_EDGE = "SELECT step, value, wall_time FROM metric_points WHERE run_id = :run AND key = :key ORDER BY step {} LIMIT 1"
_FIRST, _LAST = text(_EDGE.format("ASC")), text(_EDGE.format("DESC"))
_COUNT = text("SELECT COUNT(*) FROM metric_points WHERE run_id = :run AND key = :key")
_ALL = text("SELECT step, value, wall_time FROM metric_points WHERE run_id = :run AND key = :key ORDER BY step")

# Bucket i covers steps [lo + span*i/buckets, lo + span*(i+1)/buckets). Each bucket's
# extremes come from an index range scan with ORDER BY ... LIMIT 1: plain SQL that runs
# on SQLite and PostgreSQL alike, about 0.3 s for a million-point series on SQLite.
_IN_BUCKET = ("FROM metric_points WHERE run_id = :run AND key = :key"
              " AND step >= :lo + :span * i / :buckets AND step < :lo + :span * (i + 1) / :buckets")
_MINMAX = text(f"""
WITH RECURSIVE b(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM b WHERE i + 1 < :buckets),
picked(step) AS (
  SELECT (SELECT step {_IN_BUCKET} ORDER BY value ASC, step LIMIT 1) FROM b
  UNION
  SELECT (SELECT step {_IN_BUCKET} ORDER BY value DESC, step LIMIT 1) FROM b)
SELECT m.step, m.value, m.wall_time FROM picked
JOIN metric_points m ON m.run_id = :run AND m.key = :key AND m.step = picked.step""")

BLOCK = 256  # steps per metric_blocks row; the migration that created the table backfilled with it
_RANGE = text("SELECT step, value, wall_time FROM metric_points WHERE run_id = :run AND key = :key"
              " AND step >= :lo AND step < :hi ORDER BY step")
_BLOCKS = text("SELECT block, n, min_step, min_value, min_wall_time, max_step, max_value, max_wall_time"
               " FROM metric_blocks WHERE run_id = :run AND key = :key ORDER BY block")


def upsert_points(session: Session, run_id: int, points: Iterable[dict[str, Any]],
                  notify: bool = True) -> int:
    """Insert or overwrite on (run, key, step), so a worker may resend a batch safely."""
    rows = [{"run_id": run_id, "key": p["key"], "step": p["step"], "value": p["value"],
             "wall_time": p["wall_time"]} for p in points]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(MetricPoint)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "key", "step"],
        set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time})
    session.execute(stmt, rows)
    _refresh_blocks(session, run_id, rows, insert)
    if notify:
        record_change(session, run_id, "metrics",
                      {"points": [{k: r[k] for k in ("key", "step", "value", "wall_time")} for r in rows]})
    return len(rows)


def _refresh_blocks(session: Session, run_id: int, rows: list[dict[str, Any]], insert: Any) -> None:
    """Recompute the blocks the new points fall in from the stored points, so an
    overwritten point can also raise a block's minimum. One read per run of adjacent blocks."""
    touched = sorted({(r["key"], r["step"] // BLOCK) for r in rows})
    out = []
    for key, blocks in groupby(touched, key=lambda kb: kb[0]):
        numbers = [b for _, b in blocks]
        starts = [b for i, b in enumerate(numbers) if i == 0 or numbers[i - 1] != b - 1]
        ends = [b for i, b in enumerate(numbers) if i == len(numbers) - 1 or numbers[i + 1] != b + 1]
        for first, last in zip(starts, ends):
            points = session.execute(_RANGE, {"run": run_id, "key": key, "lo": first * BLOCK,
                                              "hi": (last + 1) * BLOCK})
            for block, members in groupby(points, key=lambda p: p[0] // BLOCK):
                members = list(members)
                lo, hi = min(members, key=lambda p: p[1]), max(members, key=lambda p: p[1])
                out.append({"run_id": run_id, "key": key, "block": block, "n": len(members),
                            "min_step": lo[0], "min_value": lo[1], "min_wall_time": lo[2],
                            "max_step": hi[0], "max_value": hi[1], "max_wall_time": hi[2]})
    stmt = insert(MetricBlock)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["run_id", "key", "block"],
        set_={c: stmt.excluded[c] for c in out[0] if c not in ("run_id", "key", "block")}), out)


def metric_keys(session: Session, run_id: int) -> list[str]:
    return [row[0] for row in session.execute(_KEYS, {"run": run_id})]


def latest_points(session: Session, run_id: int) -> dict[str, dict[str, float]]:
    """The newest point of every series: the run page's summary numbers."""
    out = {}
    for key in metric_keys(session, run_id):
        step, value, wall_time = session.execute(_LAST, {"run": run_id, "key": key}).one()
        out[key] = {"step": step, "value": value, "wall_time": wall_time}
    return out


def series(session: Session, run_id: int, key: str, max_points: int) -> dict[str, Any]:
    """At most `max_points` points of one series (max_points >= 4), columns as lists."""
    args = {"run": run_id, "key": key}
    total = session.execute(_COUNT, args).scalar_one()
    if total <= max_points:
        rows = list(session.execute(_ALL, args))
    else:
        first = session.execute(_FIRST, args).one()
        last = session.execute(_LAST, args).one()
        buckets = (max_points - 2) // 2
        picked = session.execute(_MINMAX, {**args, "buckets": buckets, "lo": first[0],
                                           "span": last[0] - first[0] + 1})
        rows = sorted({tuple(r) for r in picked} | {tuple(first), tuple(last)})
    return {"key": key, "total": total, "downsampled": total > max_points,
            "steps": [r[0] for r in rows], "values": [r[1] for r in rows],
            "wall_times": [r[2] for r in rows]}


def chart_series(session: Session, run_id: int, key: str, max_points: int) -> dict[str, Any]:
    """Like `series`, but read from metric_blocks when the series spans many blocks, so
    the cost follows the step span / BLOCK instead of the number of points."""
    args = {"run": run_id, "key": key}
    blocks = list(session.execute(_BLOCKS, args))
    total = sum(b[1] for b in blocks)
    buckets = (max_points - 2) // 2
    if total <= max_points or not blocks or blocks[-1][0] - blocks[0][0] + 1 < buckets:
        return series(session, run_id, key, max_points)
    first_block, span = blocks[0][0], blocks[-1][0] - blocks[0][0] + 1
    lows: dict[int, tuple] = {}
    highs: dict[int, tuple] = {}
    for block, _, *extremes in blocks:
        i = (block - first_block) * buckets // span
        low, high = tuple(extremes[:3]), tuple(extremes[3:])
        if i not in lows or low[1] < lows[i][1]:
            lows[i] = low
        if i not in highs or high[1] > highs[i][1]:
            highs[i] = high
    ends = {tuple(session.execute(_FIRST, args).one()), tuple(session.execute(_LAST, args).one())}
    rows = sorted(set(lows.values()) | set(highs.values()) | ends)
    return {"key": key, "total": total, "downsampled": True,
            "steps": [r[0] for r in rows], "values": [r[1] for r in rows],
            "wall_times": [r[2] for r in rows]}
