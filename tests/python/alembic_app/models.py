"""The models the migrations in versions/ create ("v1"), and a changed model ("v2") that
autogenerate must diff against the database: v2 adds a column, an index and a table.

Co-located tables for Cairn: orders' first primary-key column is its foreign key to
customers' (first) primary key."""

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    text,
)


def build_metadata(version: str = "v1") -> MetaData:
    assert version in ("v1", "v2"), version
    md = MetaData()
    customers = Table(
        "customers",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False, unique=True),
        Column("balance", Numeric(10, 2), nullable=False, server_default=text("0")),
        Column("active", Boolean, nullable=False, server_default=text("true")),
        Column("created_at", DateTime(timezone=True), server_default=text("now()")),
        CheckConstraint("balance >= 0", name="ck_customers_balance"),
    )
    Table(
        "orders",
        md,
        Column("customer_id", Integer, ForeignKey("customers.id"), primary_key=True),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("amount", Numeric(10, 2), nullable=False),
        Column("placed_at", DateTime(timezone=True)),
        Column("status", String(20), nullable=False, server_default=text("'new'")),
        Index("ix_orders_placed_at", "placed_at"),
        Index("ix_orders_status", "status"),
    )
    if version == "v2":
        customers.append_column(Column("email", String(120)))
        Index("ix_customers_email", customers.c.email)
        Table(
            "tags",
            md,
            Column("id", Integer, primary_key=True),
            Column("label", String(30), nullable=False),
        )
    return md
