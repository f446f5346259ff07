"""Alembic (with SQLAlchemy 2 and psycopg 3) against a database, unchanged: `upgrade head`
from the migrations in alembic_app/versions (CREATE TABLE, a co-located FOREIGN KEY,
CREATE INDEX, ALTER TABLE ADD COLUMN, all in one transaction), the result checked with
inspect(); autogenerate against the same model must find nothing, and against a changed
model exactly a new table, a new column and a new index; the generated revision is
applied, then `downgrade base` (DROP INDEX, ALTER TABLE DROP COLUMN, DROP TABLE).

Usage: alembic_migrations.py URL (postgresql://, postgres:// or postgresql+psycopg://).
Idempotent: drops what it creates first. Exits non-zero on failure."""

import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # nothing written into the repository's alembic_app/

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "alembic_app")
sys.path.insert(0, APP)
from models import build_metadata  # noqa: E402

TABLES = ["tags", "orders", "customers", "alembic_version"]  # drop order: orders before customers


def sa_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def config(app_dir: str, url: str, model: str = "v1") -> Config:
    cfg = Config(os.path.join(app_dir, "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["model"] = model
    return cfg


def diff(engine, model: str) -> list:
    """Autogenerate's comparison of the database with a model, as (kind, table, name)."""
    with engine.connect() as c:
        ops = compare_metadata(MigrationContext.configure(c), build_metadata(model))
    out = []
    for op in ops:
        if isinstance(op, list):  # column-level changes come grouped per column
            out.extend((o[0], o[2], o[3]) for o in op)
        elif op[0] in ("add_table", "remove_table"):
            out.append((op[0], op[1].name, None))
        elif op[0] in ("add_column", "remove_column"):
            out.append((op[0], op[2], op[3].name))
        elif op[0] in ("add_index", "remove_index"):
            out.append((op[0], op[1].table.name, op[1].name))
        elif op[0] in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
            out.append((op[0], op[1].table.name, op[1].name))
        else:
            out.append((op[0], None, repr(op[1:])))
    return out


def current_revision(engine):
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


def main(url: str) -> None:
    url = sa_url(url)
    engine = create_engine(url)
    with engine.begin() as c:
        for t in TABLES:
            c.execute(text(f"DROP TABLE IF EXISTS {t}"))

    # upgrade head: 0001 (two tables, an index) then 0002 (ADD COLUMN, an index).
    command.upgrade(config(APP, url), "head")
    assert current_revision(engine) == "0002", current_revision(engine)
    insp = inspect(engine)
    assert sorted(insp.get_table_names()) == ["alembic_version", "customers", "orders"], insp.get_table_names()
    cols = {c["name"]: c for c in insp.get_columns("orders")}
    assert list(cols) == ["customer_id", "id", "amount", "placed_at", "status"], list(cols)
    assert str(cols["amount"]["type"]) == "NUMERIC(10, 2)", cols["amount"]["type"]
    assert str(cols["status"]["type"]) == "VARCHAR(20)" and not cols["status"]["nullable"], cols["status"]
    assert insp.get_pk_constraint("orders")["constrained_columns"] == ["customer_id", "id"], insp.get_pk_constraint("orders")
    fks = insp.get_foreign_keys("orders")
    assert [(f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks] == [
        (["customer_id"], "customers", ["id"])
    ], fks
    assert sorted(i["name"] for i in insp.get_indexes("orders")) == ["ix_orders_placed_at", "ix_orders_status"], insp.get_indexes("orders")
    assert [u["column_names"] for u in insp.get_unique_constraints("customers")] == [["name"]], insp.get_unique_constraints("customers")
    print("alembic: upgrade head made customers, orders (+status, 2 indexes), alembic_version at 0002")

    # Autogenerate against the model the migrations describe: no difference at all (types,
    # nullability, primary keys, foreign keys, unique constraints and indexes all reflect back).
    d = diff(engine, "v1")
    assert d == [], d
    print("alembic: autogenerate against the unchanged model finds nothing")

    # Against the changed model: exactly the new table, column and index.
    d = diff(engine, "v2")
    assert sorted(d) == [
        ("add_column", "customers", "email"),
        ("add_index", "customers", "ix_customers_email"),
        ("add_table", "tags", None),
    ], d
    print("alembic: autogenerate against the changed model finds", sorted(d))

    # `alembic revision --autogenerate` into a scratch copy of the project, then apply it.
    tmp = tempfile.mkdtemp(prefix="alembic_app_")
    try:
        app2 = os.path.join(tmp, "alembic_app")
        shutil.copytree(APP, app2, ignore=shutil.ignore_patterns("__pycache__"))
        cfg2 = config(app2, url, "v2")
        script = command.revision(cfg2, message="v2", autogenerate=True, rev_id="0003")
        src = open(script.path).read()
        for needle in (
            "op.create_table('tags'",
            "sa.Column('label', sa.String(length=30), nullable=False)",
            "op.add_column('customers', sa.Column('email', sa.String(length=120), nullable=True))",
            "op.create_index('ix_customers_email', 'customers', ['email'], unique=False)",
            "op.drop_index('ix_customers_email', table_name='customers')",
            "op.drop_column('customers', 'email')",
            "op.drop_table('tags')",
        ):
            assert needle in src, (needle, src)
        upgrade_body = src.split("def upgrade()")[1].split("def downgrade()")[0]
        assert upgrade_body.count("op.") == 3, upgrade_body
        print("alembic: revision --autogenerate wrote create_table tags, add_column email, create_index")

        command.upgrade(cfg2, "head")
        assert current_revision(engine) == "0003", current_revision(engine)
        insp = inspect(engine)
        assert "tags" in insp.get_table_names(), insp.get_table_names()
        assert [c["name"] for c in insp.get_columns("customers")][-1] == "email"
        assert diff(engine, "v2") == [], diff(engine, "v2")
        print("alembic: the generated revision applied; the changed model now matches")

        with engine.begin() as c:
            c.execute(text("INSERT INTO customers (name, email) VALUES ('ann', 'ann@example.com')"))
            cid = c.execute(text("SELECT id FROM customers WHERE name = 'ann'")).scalar()
            c.execute(text("INSERT INTO orders (customer_id, id, amount) VALUES (:c, 1, 12.50)"), {"c": cid})
            assert c.execute(text("SELECT status FROM orders")).scalar() == "new"

        command.downgrade(cfg2, "base")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    assert current_revision(engine) is None, current_revision(engine)
    assert inspect(engine).get_table_names() == ["alembic_version"], inspect(engine).get_table_names()
    print("alembic: downgrade base dropped tags, the email column, orders and customers")

    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    print("alembic: ok")


if __name__ == "__main__":
    main(sys.argv[1])
