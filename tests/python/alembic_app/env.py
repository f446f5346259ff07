"""Alembic environment for tests/python/alembic_app. The URL comes from `-x url=...`, the
config's sqlalchemy.url, or CAIRN_DATABASE_URL; the model version ("v1" or "v2") from the
config attribute "model", `-x model=...`, or ALEMBIC_APP_MODEL (default v1)."""

import os

from alembic import context
from sqlalchemy import create_engine

from models import build_metadata

config = context.config
x = context.get_x_argument(as_dictionary=True)
url = x.get("url") or config.get_main_option("sqlalchemy.url") or os.environ["CAIRN_DATABASE_URL"]
model = config.attributes.get("model") or x.get("model") or os.environ.get("ALEMBIC_APP_MODEL", "v1")
target_metadata = build_metadata(model)


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    if "engine" not in config.attributes:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
