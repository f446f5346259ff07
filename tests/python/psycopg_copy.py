"""psycopg 3 COPY against a database, unchanged: `COPY ... FROM STDIN` through
cursor.copy() with write_row() for int, bigint, text, varchar, numeric, boolean,
timestamptz, uuid, bytea and jsonb, NULLs and text that needs escaping; COPY text and CSV
written in blocks cut in the middle of rows; a failed COPY that leaves nothing; then
executemany (pipelined) and a statement run often enough to be prepared server-side.
`COPY ... TO STDOUT` is in its own function, copy_to_stdout().

Usage: psycopg_copy.py URL (postgresql://, postgres:// or postgresql+psycopg://).
Idempotent: drops what it creates first. Exits non-zero on failure."""

import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb

DDL = """CREATE TABLE pcopy (
    id integer PRIMARY KEY,
    qty bigint,
    name text,
    code varchar(20),
    price numeric(10, 2),
    ok boolean,
    at timestamptz,
    u uuid,
    raw bytea,
    doc jsonb
)"""
COLS = "id, qty, name, code, price, ok, at, u, raw, doc"
T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc)


def conninfo(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def rows_of_types():
    tricky = "tab\there, newline\nthere, backslash \\ and \\N, quote ' \" é ✓"
    return [
        (1, 9_000_000_000, "ann", "A-1", Decimal("12.50"), True, T0, uuid.UUID(int=1), b"\x00\x01\\\xff", Jsonb({"a": [1, 2]})),
        (2, None, None, None, None, None, None, None, None, None),
        (3, -1, tricky, "", Decimal("-0.01"), False, T0 - timedelta(days=400), uuid.UUID(int=2**128 - 1), b"", Jsonb(None)),
        (4, 0, "", "x" * 20, Decimal("99999999.99"), True, T0 + timedelta(microseconds=1), uuid.uuid5(uuid.NAMESPACE_DNS, "cairn"), bytes(range(256)), Jsonb({"s": tricky})),
    ]


def copy_write_row(conn) -> None:
    rows = rows_of_types()
    with conn.cursor() as cur:
        with cur.copy(f"COPY pcopy ({COLS}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == 4, cur.rowcount
        cur.execute(f"SELECT {COLS} FROM pcopy ORDER BY id")
        got = cur.fetchall()
    want = [tuple(v.obj if isinstance(v, Jsonb) else v for v in r) for r in rows]
    assert got == want, (got, want)
    print("psycopg: COPY FROM STDIN with write_row: 4 rows of 10 types, NULLs, escapes, round-trip exact")


def copy_blocks(conn) -> None:
    # Text format, the data cut into blocks that do not follow row boundaries.
    data = "".join(f"{i}\tname {i}\t{i}.25\t{'t' if i % 2 else 'f'}\t\\N\n" for i in range(100, 200))
    blocks = [data[i : i + 37] for i in range(0, len(data), 37)]
    with conn.cursor() as cur:
        with cur.copy("COPY pcopy (id, name, price, ok, code) FROM STDIN") as copy:
            for b in blocks:
                copy.write(b)
        assert cur.rowcount == 100, cur.rowcount
        cur.execute("SELECT count(*), sum(price), count(code), sum(CASE WHEN ok THEN 1 ELSE 0 END) FROM pcopy WHERE id BETWEEN 100 AND 199")
        n, total, codes, oks = cur.fetchone()
        assert (n, total, codes, oks) == (100, Decimal("14975.00"), 0, 50), (n, total, codes, oks)
        cur.execute("SELECT name, price FROM pcopy WHERE id = 142")
        assert cur.fetchone() == ("name 142", Decimal("142.25"))
    print(f"psycopg: COPY text written in {len(blocks)} blocks cut mid-row: 100 rows")

    # CSV with a header, quoted fields holding the delimiter, quotes and a newline, and an
    # unquoted empty field as NULL (a quoted empty one is an empty string).
    csv = (
        "id,name,code,price\n"
        '300,"Smith, Jane","Q""1",1.50\n'
        '301,"two\nlines",,2.00\n'
        '302,plain,"",\n'
    ).encode()
    with conn.cursor() as cur:
        with cur.copy("COPY pcopy (id, name, code, price) FROM STDIN (FORMAT csv, HEADER true)") as copy:
            for i in range(0, len(csv), 5):
                copy.write(csv[i : i + 5])
        assert cur.rowcount == 3, cur.rowcount
        cur.execute("SELECT id, name, code, price FROM pcopy WHERE id >= 300 ORDER BY id")
        got = cur.fetchall()
    assert got == [
        (300, "Smith, Jane", 'Q"1', Decimal("1.50")),
        (301, "two\nlines", None, Decimal("2.00")),
        (302, "plain", "", None),
    ], got
    print("psycopg: COPY CSV with a header in 5-byte blocks: quotes, commas, newline, NULL vs ''")


def copy_failure(conn) -> None:
    # A bad value fails the whole COPY: no row of it stays (autocommit: the COPY is its own
    # transaction); a duplicate key likewise.
    for cols, data in (("id, qty", "400\t1\n401\tnot-a-number\n"), ("id, name", "402\tx\n1\tduplicate\n")):
        try:
            with conn.cursor() as cur:
                with cur.copy(f"COPY pcopy ({cols}) FROM STDIN") as copy:
                    copy.write(data)
            raise AssertionError(f"a bad COPY was accepted: {data!r}")
        except psycopg.Error:
            pass
        assert conn.execute("SELECT count(*) FROM pcopy WHERE id >= 400").fetchone()[0] == 0
    # An exception raised by the client inside the block sends CopyFail.
    try:
        with conn.cursor() as cur:
            with cur.copy("COPY pcopy (id, name) FROM STDIN") as copy:
                copy.write_row((500, "never"))
                raise RuntimeError("client gives up")
    except (RuntimeError, psycopg.errors.QueryCanceled):
        pass
    assert conn.execute("SELECT count(*) FROM pcopy WHERE id = 500").fetchone()[0] == 0
    print("psycopg: a failing COPY (bad value, duplicate key, client CopyFail) loads nothing")


def executemany_and_prepare(conn) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE pcopy SET qty = %s, at = %s WHERE id = %s",
            [(i * 10, T0, i) for i in range(100, 110)],
        )
        cur.execute("SELECT sum(qty), count(at) FROM pcopy WHERE id BETWEEN 100 AND 109")
        assert cur.fetchone() == (10 * sum(range(100, 110)), 10)
        cur.executemany(
            "INSERT INTO pcopy (id, name, price) VALUES (%s, %s, %s) RETURNING id",
            [(600 + i, f"r{i}", Decimal(i)) for i in range(3)],
            returning=True,
        )
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        assert ids == [600, 601, 602], ids
    # The same query run more than prepare_threshold (5) times is prepared server-side.
    for i in range(8):
        row = conn.execute("SELECT name, price FROM pcopy WHERE id = %s", (600 + i % 3,)).fetchone()
        assert row == (f"r{i % 3}", Decimal(i % 3)), row
    # Binary results on request.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, qty, price, ok, at, u, raw FROM pcopy WHERE id = %s", (1,))
        assert cur.fetchone() == (1, 9_000_000_000, Decimal("12.50"), True, T0, uuid.UUID(int=1), b"\x00\x01\\\xff")
    print("psycopg: executemany (update, insert returning), a server-side prepared statement, binary results")


def copy_to_stdout(conn) -> None:
    """COPY ... TO STDOUT (psql's \\copy to, pg_dump): text rows and read_row()."""
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, name, price FROM pcopy WHERE id IN (1, 2, 3) ORDER BY id) TO STDOUT") as copy:
            text = b"".join(bytes(b) for b in copy)
        assert text.decode() == (
            "1\tann\t12.50\n"
            "2\t\\N\t\\N\n"
            "3\ttab\\there, newline\\nthere, backslash \\\\ and \\\\N, quote ' \" é ✓\t-0.01\n"
        ), text
        with cur.copy("COPY pcopy (id, name, ok) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "bool"])
            got = sorted(r for r in copy.rows() if r[0] < 100)
        assert got == [(1, "ann", True), (2, None, None), (3, rows_of_types()[2][2], False), (4, "", True)], got
    print("psycopg: COPY TO STDOUT, as text and as typed rows")


def main(url: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS pcopy")
        conn.execute(DDL)
        copy_write_row(conn)
        copy_blocks(conn)
        copy_failure(conn)
        executemany_and_prepare(conn)
        copy_to_stdout(conn)
        conn.execute("DROP TABLE pcopy")
    print("psycopg: ok")


if __name__ == "__main__":
    main(sys.argv[1])
