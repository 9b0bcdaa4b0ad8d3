"""Metric ingest (idempotent upsert) and min/max downsampling for charts.

A series can hold a million points; charts need a couple of thousand. Downsampling
runs in SQL: the step range is cut into buckets and each bucket keeps its lowest and
highest point, plus the series' first and last point, so spikes and the curve's
envelope survive while the answer stays under `max_points`.

Scanning a million-point series that way takes about 0.3 s, too slow for a run page
with five of them. So ingest also keeps `metric_blocks`: the lowest and highest point
of every `BLOCK`-step slice. `chart_series` merges those (span / BLOCK rows) into
buckets, giving the same kind of envelope from a few thousand rows.

A NaN or infinite value cannot travel in JSON and would poison min/max: such points
live in `metric_nonfinite` instead, every series answer lists them, and the first one of
each series is a warning event naming key and step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from app.models import MetricBlock, MetricNonFinite, MetricPoint
from app.services.events import log_event, record_change

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
_IN_BUCKET = (
    "FROM metric_points WHERE run_id = :run AND key = :key"
    " AND step >= :lo + :span * i / :buckets AND step < :lo + :span * (i + 1) / :buckets"
)
_MINMAX = text(f"""
WITH RECURSIVE b(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM b WHERE i + 1 < :buckets),
picked(step) AS (
  SELECT (SELECT step {_IN_BUCKET} ORDER BY value ASC, step LIMIT 1) FROM b
  UNION
  SELECT (SELECT step {_IN_BUCKET} ORDER BY value DESC, step LIMIT 1) FROM b)
SELECT m.step, m.value, m.wall_time FROM picked
JOIN metric_points m ON m.run_id = :run AND m.key = :key AND m.step = picked.step""")

BLOCK = 256  # steps per metric_blocks row; the migration that created the table backfilled with it
_RANGE = text(
    "SELECT step, value, wall_time FROM metric_points WHERE run_id = :run AND key = :key"
    " AND step >= :lo AND step < :hi ORDER BY step"
)
_NONFINITE = text(
    "SELECT step, value, wall_time FROM metric_nonfinite WHERE run_id = :run AND key = :key ORDER BY step"
)
_ANY_NONFINITE = text("SELECT 1 FROM metric_nonfinite WHERE run_id = :run LIMIT 1")
_HAS_NONFINITE = text("SELECT 1 FROM metric_nonfinite WHERE run_id = :run AND key = :key LIMIT 1")
_STEPS_IN = "SELECT step FROM {} WHERE run_id = :run AND key = :key AND step >= :lo AND step <= :hi"
_DROP = "DELETE FROM {} WHERE run_id = :run_id AND key = :key AND step = :step"
_BLOCKS = text(
    "SELECT block, n, min_step, min_value, min_wall_time, max_step, max_value, max_wall_time"
    " FROM metric_blocks WHERE run_id = :run AND key = :key ORDER BY block"
)


def upsert_points(
    session: Session, run_id: int, points: Iterable[dict[str, Any]], notify: bool = True, fill_only: bool = False
) -> int:
    """Insert or overwrite on (run, key, step), so a worker may resend a batch safely.

    `fill_only` (the late points of a fenced-off attempt) stores a point only where the run
    has none at that step: the current attempt's own point always wins. Returns how many
    points were stored.
    """
    finite, nonfinite = [], []
    for p in points:
        row = {"run_id": run_id, "key": p["key"], "step": p["step"], "wall_time": p["wall_time"]}
        if p.get("nonfinite"):
            nonfinite.append({**row, "value": p["nonfinite"]})
        else:
            finite.append({**row, "value": p["value"]})
    if fill_only:
        finite, nonfinite = _absent(session, run_id, finite), _absent(session, run_id, nonfinite)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    if finite:
        _upsert(session, insert, MetricPoint, finite)
        if session.execute(_ANY_NONFINITE, {"run": run_id}).first() is not None:  # only diverged runs pay for this
            session.execute(text(_DROP.format("metric_nonfinite")), finite)
        _refresh_blocks(session, run_id, finite, insert)
        if notify:
            record_change(
                session,
                run_id,
                "metrics",
                {"points": [{k: r[k] for k in ("key", "step", "value", "wall_time")} for r in finite]},
            )
    if nonfinite:
        _record_nonfinite(session, run_id, nonfinite, insert)
        if notify:  # a live run page marks them as they come
            record_change(
                session,
                run_id,
                "metrics",
                {
                    "points": [
                        {
                            "key": r["key"],
                            "step": r["step"],
                            "value": None,
                            "nonfinite": r["value"],
                            "wall_time": r["wall_time"],
                        }
                        for r in nonfinite
                    ]
                },
            )
    return len(finite) + len(nonfinite)


def _upsert(session: Session, insert: Any, table: type, rows: list[dict[str, Any]]) -> None:
    stmt = insert(table)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["run_id", "key", "step"],
            set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time},
        ),
        rows,
    )


def _absent(session: Session, run_id: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose (key, step) holds no point yet, finite or not."""
    out: list[dict[str, Any]] = []
    for key, grouped in groupby(sorted(rows, key=lambda r: (r["key"], r["step"])), key=lambda r: r["key"]):
        group = list(grouped)
        args = {"run": run_id, "key": key, "lo": group[0]["step"], "hi": group[-1]["step"]}
        taken = {
            step
            for table in ("metric_points", "metric_nonfinite")
            for (step,) in session.execute(text(_STEPS_IN.format(table)), args)
        }
        out.extend(r for r in group if r["step"] not in taken)
    return out


def _record_nonfinite(session: Session, run_id: int, rows: list[dict[str, Any]], insert: Any) -> None:
    """Store non-finite points in place of any finite one at their step, and make the first
    one of each series a warning event: that is where the run diverged."""
    first: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        if r["key"] not in first and session.execute(_HAS_NONFINITE, {"run": run_id, "key": r["key"]}).first() is None:
            first[r["key"]] = r
    _upsert(session, insert, MetricNonFinite, rows)
    session.execute(text(_DROP.format("metric_points")), rows)
    _refresh_blocks(session, run_id, rows, insert)
    for key, r in first.items():
        log_event(session, run_id, "warning", f"{key} became non-finite ({r['value']}) at step {r['step']}")


def _refresh_blocks(session: Session, run_id: int, rows: list[dict[str, Any]], insert: Any) -> None:
    """Recompute the blocks the new points fall in from the stored points, so an
    overwritten point can also raise a block's minimum. One read per run of adjacent blocks."""
    touched = sorted({(r["key"], r["step"] // BLOCK) for r in rows})
    out: list[dict[str, Any]] = []
    for key, blocks in groupby(touched, key=lambda kb: kb[0]):
        numbers = [b for _, b in blocks]
        starts = [b for i, b in enumerate(numbers) if i == 0 or numbers[i - 1] != b - 1]
        ends = [b for i, b in enumerate(numbers) if i == len(numbers) - 1 or numbers[i + 1] != b + 1]
        for first, last in zip(starts, ends):
            points = session.execute(_RANGE, {"run": run_id, "key": key, "lo": first * BLOCK, "hi": (last + 1) * BLOCK})
            for block, in_block in groupby(points, key=lambda p: p[0] // BLOCK):
                members = list(in_block)
                lo, hi = min(members, key=lambda p: p[1]), max(members, key=lambda p: p[1])
                out.append(
                    {
                        "run_id": run_id,
                        "key": key,
                        "block": block,
                        "n": len(members),
                        "min_step": lo[0],
                        "min_value": lo[1],
                        "min_wall_time": lo[2],
                        "max_step": hi[0],
                        "max_value": hi[1],
                        "max_wall_time": hi[2],
                    }
                )
    kept = {(r["key"], r["block"]) for r in out}
    emptied = [{"run_id": run_id, "key": k, "block": b} for k, b in touched if (k, b) not in kept]
    if emptied:  # a finite point was replaced by a non-finite one
        session.execute(
            text("DELETE FROM metric_blocks WHERE run_id = :run_id AND key = :key AND block = :block"), emptied
        )
    if not out:
        return
    stmt = insert(MetricBlock)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["run_id", "key", "block"],
            set_={c: stmt.excluded[c] for c in out[0] if c not in ("run_id", "key", "block")},
        ),
        out,
    )


def nonfinite_points(session: Session, run_id: int, key: str, max_points: int) -> dict[str, Any]:
    """The steps where a series was NaN or infinite, with the value's name ('nan', 'inf', '-inf').
    A run that trains on through a diverged loss (on_nonfinite=continue) can have one at every
    logged step, so beyond `max_points` they are thinned evenly, first and last kept."""
    rows = list(session.execute(_NONFINITE, {"run": run_id, "key": key}))
    total, keep = len(rows), max(max_points, 2)
    if total > keep:
        rows = [rows[i] for i in sorted({round(j * (total - 1) / (keep - 1)) for j in range(keep)})]
    return {
        "total": total,
        "steps": [r[0] for r in rows],
        "values": [r[1] for r in rows],
        "wall_times": [r[2] for r in rows],
    }


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
        rows: Sequence[Sequence[Any]] = list(session.execute(_ALL, args))
    else:
        first = session.execute(_FIRST, args).one()
        last = session.execute(_LAST, args).one()
        buckets = (max_points - 2) // 2
        picked = session.execute(_MINMAX, {**args, "buckets": buckets, "lo": first[0], "span": last[0] - first[0] + 1})
        rows = sorted({tuple(r) for r in picked} | {tuple(first), tuple(last)})
    return {
        "key": key,
        "total": total,
        "downsampled": total > max_points,
        "steps": [r[0] for r in rows],
        "values": [r[1] for r in rows],
        "wall_times": [r[2] for r in rows],
        "nonfinite": nonfinite_points(session, run_id, key, max_points),
    }


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
    return {
        "key": key,
        "total": total,
        "downsampled": True,
        "steps": [r[0] for r in rows],
        "values": [r[1] for r in rows],
        "wall_times": [r[2] for r in rows],
        "nonfinite": nonfinite_points(session, run_id, key, max_points),
    }
