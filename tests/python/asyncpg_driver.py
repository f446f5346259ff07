"""asyncpg against a database, unchanged: named prepared statements with parameters and
binary results for int, bigint, text, numeric, bool, timestamptz, uuid, bytea and json,
executemany, transactions that commit and roll back (and a savepoint),
copy_records_to_table (binary COPY FROM STDIN), a json codec set with set_type_codec
(which reads pg_type), and, in its own function, `= ANY($1)` with an int[] parameter
(arrays; asyncpg introspects the array type with its recursive pg_type query first).

Usage: asyncpg_driver.py URL (postgresql://, postgres:// or postgresql+asyncpg://).
Idempotent: drops what it creates first. Exits non-zero on failure."""

import asyncio
import json
import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg

DDL = """CREATE TABLE apg_items (
    id integer PRIMARY KEY,
    big bigint NOT NULL,
    name text NOT NULL,
    price numeric(10, 2),
    ok boolean NOT NULL DEFAULT true,
    at timestamptz,
    u uuid,
    raw bytea,
    doc json
)"""

T0 = datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=timezone.utc)
U1 = uuid.UUID("12345678-1234-5678-1234-567812345678")


def dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


async def values_and_types(conn) -> None:
    """Named prepared statements, parameters and binary results for each type."""
    await conn.execute(
        "INSERT INTO apg_items (id, big, name, price, ok, at, u, raw, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        1, 9_000_000_000, "ann", Decimal("12.50"), True, T0, U1, b"\x00\x01\xfe\xff", '{"a": [1, 2], "b": null}',
    )
    # A row of NULLs where the columns allow them.
    await conn.execute("INSERT INTO apg_items (id, big, name) VALUES ($1, $2, $3)", 2, -1, "bob")

    stmt = await conn.prepare("SELECT id, big, name, price, ok, at, u, raw, doc FROM apg_items WHERE id = $1")
    assert [t.name for t in stmt.get_parameters()] == ["int4"], stmt.get_parameters()
    assert [(a.name, a.type.name) for a in stmt.get_attributes()] == [
        ("id", "int4"), ("big", "int8"), ("name", "text"), ("price", "numeric"), ("ok", "bool"),
        ("at", "timestamptz"), ("u", "uuid"), ("raw", "bytea"), ("doc", "json"),
    ], stmt.get_attributes()
    row = await stmt.fetchrow(1)
    assert row["id"] == 1 and row["big"] == 9_000_000_000 and row["name"] == "ann", row
    assert row["price"] == Decimal("12.50") and row["ok"] is True, row
    assert row["at"] == T0 and row["u"] == U1 and row["raw"] == b"\x00\x01\xfe\xff", row
    assert json.loads(row["doc"]) == {"a": [1, 2], "b": None}, row["doc"]
    row = await stmt.fetchrow(2)
    assert tuple(row) == (2, -1, "bob", None, True, None, None, None, None), row
    assert await stmt.fetchrow(3) is None
    print("asyncpg: prepared statement types and binary values for 9 types, NULLs")

    # Parameters of each type in the WHERE clause, and expressions on them.
    assert await conn.fetchval("SELECT id FROM apg_items WHERE u = $1", U1) == 1
    assert await conn.fetchval("SELECT id FROM apg_items WHERE raw = $1", b"\x00\x01\xfe\xff") == 1
    assert await conn.fetchval("SELECT id FROM apg_items WHERE at > $1", T0 - timedelta(seconds=1)) == 1
    assert await conn.fetchval("SELECT count(*) FROM apg_items WHERE big >= $1 AND ok = $2", -1, True) == 2
    assert await conn.fetchval("SELECT price * $1 FROM apg_items WHERE id = 1", Decimal("2")) == Decimal("25.00")
    assert await conn.fetchval("SELECT name || $1 FROM apg_items WHERE id = $2", "!", 2) == "bob!"
    assert await conn.fetchval("SELECT $1::text IS NULL", None) is True
    print("asyncpg: uuid, bytea, timestamptz, bigint, bool, numeric and text parameters")



async def executemany_and_transactions(conn) -> None:
    await conn.executemany(
        "INSERT INTO apg_items (id, big, name, price) VALUES ($1, $2, $3, $4)",
        [(10 + i, i * 1000, f"m{i}", Decimal(i) / 4) for i in range(5)],
    )
    rows = await conn.fetch("SELECT id, price FROM apg_items WHERE name LIKE 'm%' ORDER BY id")
    assert [(r["id"], r["price"]) for r in rows] == [(10 + i, Decimal(i) / 4) for i in range(5)], rows
    print("asyncpg: executemany inserted 5 rows")

    async with conn.transaction():
        await conn.execute("UPDATE apg_items SET name = 'ann2' WHERE id = 1")
    assert await conn.fetchval("SELECT name FROM apg_items WHERE id = 1") == "ann2"

    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM apg_items WHERE id >= 10")
            assert await conn.fetchval("SELECT count(*) FROM apg_items") == 2
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert await conn.fetchval("SELECT count(*) FROM apg_items") == 7

    async with conn.transaction():
        await conn.execute("UPDATE apg_items SET ok = false WHERE id = 10")
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute("INSERT INTO apg_items (id, big, name) VALUES (1, 0, 'dup')")
            raise AssertionError("a duplicate primary key was accepted")
        except asyncpg.UniqueViolationError:
            pass
    assert await conn.fetchval("SELECT ok FROM apg_items WHERE id = 10") is False
    print("asyncpg: transaction commit, rollback, and a savepoint undoing a unique violation")


async def copy_records(conn) -> None:
    records = [
        (100 + i, 10**12 + i, f"c{i}", Decimal(f"{i}.05") if i % 2 else None, i % 2 == 0,
         T0 + timedelta(days=i), uuid.UUID(int=i), bytes([i, 0, 255]), json.dumps({"i": i}))
        for i in range(50)
    ]
    res = await conn.copy_records_to_table(
        "apg_items", records=records, columns=["id", "big", "name", "price", "ok", "at", "u", "raw", "doc"]
    )
    assert res == "COPY 50", res
    got = await conn.fetch("SELECT id, big, name, price, ok, at, u, raw, doc FROM apg_items WHERE id >= 100 ORDER BY id")
    assert len(got) == 50
    for r, want in zip(got, records):
        assert tuple(r)[:8] == want[:8] and json.loads(r["doc"]) == {"i": want[0] - 100}, (tuple(r), want)
    # A subset of the columns: the others take their defaults.
    res = await conn.copy_records_to_table("apg_items", records=[(200, 2, "d")], columns=["id", "big", "name"])
    assert res == "COPY 1", res
    assert await conn.fetchval("SELECT ok FROM apg_items WHERE id = 200") is True
    print("asyncpg: copy_records_to_table copied 50 rows of 9 types, and a row with defaults")


async def json_codec(url: str) -> None:
    """A json codec (on a connection of its own: a text-format codec cannot be used by the
    binary COPY of copy_records_to_table): set_type_codec looks the type up in pg_type."""
    conn = await asyncpg.connect(dsn(url))
    try:
        await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        assert await conn.fetchval("SELECT doc FROM apg_items WHERE id = 1") == {"a": [1, 2], "b": None}
        await conn.execute("UPDATE apg_items SET doc = $1 WHERE id = 2", {"k": "v"})
        assert await conn.fetchval("SELECT doc FROM apg_items WHERE id = 2") == {"k": "v"}
    finally:
        await conn.close()
    print("asyncpg: json through set_type_codec")


async def arrays_any(conn) -> None:
    """ARRAYS (coming to Cairn): `= ANY($1)` with an int[] parameter, and an int[] result.
    asyncpg first runs its recursive pg_type introspection query for the array type."""
    rows = await conn.fetch("SELECT id FROM apg_items WHERE id = ANY($1::int[]) ORDER BY id", [1, 2, 11, 999])
    assert [r["id"] for r in rows] == [1, 2, 11], rows
    rows = await conn.fetch("SELECT name FROM apg_items WHERE id = ANY($1) ORDER BY id", [10, 12])
    assert [r["name"] for r in rows] == ["m0", "m2"], rows
    assert await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM apg_items WHERE id < 10") == [1, 2]
    print("asyncpg: = ANY($1) with an int[] parameter, and an int[] result")


async def main(url: str) -> None:
    conn = await asyncpg.connect(dsn(url))
    try:
        assert conn.get_server_version().major >= 13, conn.get_server_version()
        await conn.execute("DROP TABLE IF EXISTS apg_items")
        await conn.execute(DDL)
        await values_and_types(conn)
        await executemany_and_transactions(conn)
        await copy_records(conn)
        await json_codec(url)
        await arrays_any(conn)
        await conn.execute("DROP TABLE apg_items")
    finally:
        await conn.close()
    print("asyncpg: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
