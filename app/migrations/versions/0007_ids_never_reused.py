"""Run and sweep ids are never handed out again. On SQLite an `INTEGER PRIMARY KEY` without
AUTOINCREMENT takes max(id) + 1, so deleting the newest run gave its id, and with it old
links, comparisons and its backup folder (`run-<id>`, whose Hub files a delete keeps), to
the next run. The change feed's ids too: a deleted run takes its changes with it, and a
browser whose Last-Event-ID lay past them would miss the next ones. `runs`, `sweeps` and
`changes` are rebuilt with AUTOINCREMENT, their `sqlite_sequence` starting at the highest id
used so far (for runs, deleted ones included: their deletion stays in the change feed).
PostgreSQL's sequences never go back, so there is nothing to do there.

Checklist items record the attempt that verified them: a resumed attempt skips a smoke test
an earlier attempt passed and says which one.

The rebuild copies `runs` and drops the old table; app.db.Database.migrate turns foreign
keys off meanwhile, so what the runs own stays.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("sweeps", "runs", "changes")


def _highest_id(conn: sa.Connection, table: str) -> int:
    """The highest id the table ever handed out, as far as it can still be told: a deleted run
    is gone from `runs`, not from the change feed."""
    ids = [conn.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar_one()]
    if table == "runs":
        for (data,) in conn.execute(sa.text("SELECT data FROM changes WHERE kind = 'run' AND run_id IS NULL")):
            summary = json.loads(data)
            if summary.get("deleted"):
                ids.append(summary["id"])
    return max(ids)


def _rebuild(table: str, autoincrement: bool) -> None:
    with op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": True} if autoincrement else {}
    ):
        pass


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("checklist_items", sa.Column("attempt", sa.Integer, nullable=True))
    if conn.dialect.name != "sqlite":
        return
    for table in TABLES:
        highest = _highest_id(conn, table)
        _rebuild(table, autoincrement=True)
        conn.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
        conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :n)"), {"t": table, "n": highest})


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            _rebuild(table, autoincrement=False)  # dropping an AUTOINCREMENT table drops its sequence row
    with op.batch_alter_table("checklist_items") as batch:
        batch.drop_column("attempt")
