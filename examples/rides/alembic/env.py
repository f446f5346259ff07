"""Alembic's environment: online migrations only, against RIDES_DATABASE_URL (or the
`sqlalchemy.url` option, which the tests set)."""

import os
from logging.config import fileConfig

from sqlalchemy import create_engine, pool

from alembic import context
from rides.models import Base

config = context.config
# The tests ask for no logging setup: fileConfig would replace pytest's handlers.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or os.environ.get("RIDES_DATABASE_URL")
if not url:
    raise RuntimeError("set RIDES_DATABASE_URL, e.g. postgresql+psycopg://cairn@127.0.0.1:5433/cairn")

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    # On PostgreSQL (and Cairn) DDL is transactional: each `alembic upgrade` runs in one
    # transaction, its alembic_version update included.
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
