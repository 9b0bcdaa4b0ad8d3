"""A checkpoint keeps where its worker saved it (a file:// URL), so that the server can serve
it for download when it shares the worker's machine (`dlite up`, Colab) and the file is
still the one that was saved (app.services.checkpoint_files).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("local_url", sa.String, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("local_url")
