"""Alembic environment, driven from code only (app.db.Database.migrate passes the
connection in `config.attributes`); there is no alembic.ini."""

from alembic import context

from app.models import SQLModel

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
)
with context.begin_transaction():
    context.run_migrations()
