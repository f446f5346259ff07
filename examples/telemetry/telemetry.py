#!/usr/bin/env python3
"""Autonomous-vehicle fleet telemetry on Cairn (or PostgreSQL 15): writers stream position
reports at a steady rate while readers run the fleet queries with bounded staleness on any
replica; every answer is checked against what the writers sent and had acknowledged.

    python examples/telemetry/telemetry.py --url postgres://cairn@127.0.0.1:5433/cairn,...
    python examples/telemetry/telemetry.py --quick --url ...     # about 10 s, for CI

A report's contents are a pure function of (seed, vehicle, seq), and the run writes exactly
--rate x --duration reports whatever the timing, so the final answers are known in advance;
only writes whose outcome stayed unknown (see Writer.insert) loosen them. Exits non-zero on
any wrong answer.
"""

import argparse
import bisect
import math
import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import errors

T0 = datetime(2024, 6, 1, 8, 0, 30, tzinfo=timezone.utc)  # simulated time of seq 0
WINDOW = 30  # speed statistics over the last WINDOW seconds of simulated time
BBOX = (37.70, 37.77, -122.50, -122.43)  # lat_min, lat_max, lon_min, lon_max
SLACK = 0.5  # s: leader heartbeat carrying the commit index, on top of max_staleness
TRACK_VEHICLE = 1
MODELS = ["Atlas L4", "Orbit S2", "Kestrel X", "Tern 3"]
DEPOTS = ["Mission Bay", "Dogpatch", "Presidio", "Sunset"]
# Lost connections, 08007 (outcome unknown), 40001, 57P01 ... and XX000: worth another try.
RETRYABLE = (psycopg.OperationalError, psycopg.InternalError)

INSERT = ("INSERT INTO positions (vehicle_id, seq, ts, lat, lon, speed_kmh, heading, battery_pct)"
          " VALUES ")
ROW = "(%s, %s, %s, %s, %s, %s, %s, %s)"
LAST_JOIN = "(SELECT vehicle_id, max(seq) AS seq FROM positions GROUP BY vehicle_id) AS m"
SQL = {
    ("last", "distinct-on"):
        "SELECT DISTINCT ON (p.vehicle_id) p.vehicle_id, v.name, p.seq, p.ts, p.lat, p.lon, "
        "p.speed_kmh FROM positions p JOIN vehicles v ON v.vehicle_id = p.vehicle_id "
        "ORDER BY p.vehicle_id, p.seq DESC",
    ("last", "join"):
        "SELECT p.vehicle_id, v.name, p.seq, p.ts, p.lat, p.lon, p.speed_kmh FROM positions p "
        f"JOIN {LAST_JOIN} ON m.vehicle_id = p.vehicle_id AND m.seq = p.seq "
        "JOIN vehicles v ON v.vehicle_id = p.vehicle_id ORDER BY p.vehicle_id",
    ("bbox", "distinct-on"):
        "SELECT vehicle_id, seq, lat, lon FROM (SELECT DISTINCT ON (vehicle_id) vehicle_id, seq, "
        "lat, lon FROM positions ORDER BY vehicle_id, seq DESC) AS last "
        "WHERE lat BETWEEN %s AND %s AND lon BETWEEN %s AND %s ORDER BY vehicle_id",
    ("bbox", "join"):
        f"SELECT p.vehicle_id, p.seq, p.lat, p.lon FROM positions p JOIN {LAST_JOIN} "
        "ON m.vehicle_id = p.vehicle_id AND m.seq = p.seq "
        "WHERE p.lat BETWEEN %s AND %s AND p.lon BETWEEN %s AND %s ORDER BY p.vehicle_id",
    "speed":
        "SELECT vehicle_id, count(*), avg(speed_kmh), min(speed_kmh), max(speed_kmh) "
        "FROM positions WHERE ts >= %s AND ts < %s GROUP BY vehicle_id ORDER BY vehicle_id",
    "minutes":
        "SELECT date_trunc('minute', ts) AS minute, count(*) FROM positions "
        "GROUP BY date_trunc('minute', ts) ORDER BY minute",
    "track":
        "SELECT seq, ts, lat, lon, speed_kmh, heading, battery_pct FROM positions "
        "WHERE vehicle_id = %s ORDER BY seq DESC LIMIT 5",
    "count": "SELECT count(*) FROM positions",
}


class Vehicle:
    """One vehicle on a circular track around its own centre, with a speed that swells and
    ebbs; position integrates the speed in closed form, so any report can be computed alone."""

    def __init__(self, seed, vid, reports):
        r = random.Random(seed * 1_000_003 + vid)
        self.id, self.reports = vid, reports
        self.name, self.model, self.depot = f"AV-{vid:04d}", r.choice(MODELS), r.choice(DEPOTS)
        self.lat0, self.lon0 = 37.70 + r.uniform(0, 0.12), -122.50 + r.uniform(0, 0.12)
        self.radius = r.uniform(300, 3000)  # m
        self.base, self.amp, self.period = r.uniform(20, 60), r.uniform(0, 15), r.uniform(30, 120)
        self.theta0, self.dir = r.uniform(0, 2 * math.pi), r.choice((-1, 1))
        self.phase_ms = r.randrange(1000)  # reports at T0 + seq s + phase: vehicles interleave
        self.battery0, self.drain = r.uniform(60, 100), r.uniform(0.01, 0.05)

    def ts(self, k):
        return T0 + timedelta(seconds=k, milliseconds=self.phase_ms)

    def speed(self, k):
        return round(self.base + self.amp * math.sin(2 * math.pi * k / self.period), 1)

    def report(self, k):
        """(vehicle_id, seq, ts, lat, lon, speed_kmh, heading, battery_pct) of report k."""
        w = 2 * math.pi / self.period
        metres = (self.base * k + self.amp / w * (1 - math.cos(w * k))) / 3.6
        th = self.theta0 + self.dir * metres / self.radius
        lat = round(self.lat0 + self.radius * math.sin(th) / 111_320, 6)
        lon = round(self.lon0 + self.radius * math.cos(th)
                    / (111_320 * math.cos(math.radians(self.lat0))), 6)
        heading = round(math.degrees(math.atan2(-self.dir * math.sin(th),
                                                self.dir * math.cos(th)))) % 360
        battery = round(max(5.0, self.battery0 - self.drain * k), 1)
        return (self.id, k, self.ts(k), lat, lon, self.speed(k), heading, battery)


def close(a, b, rel=1e-9):
    """Equal, for floats up to summation order (avg) — or float4 rounding, with rel=1e-6."""
    if isinstance(b, float):
        return isinstance(a, float) and abs(a - b) <= rel * max(1.0, abs(b))
    return a == b


def show(row):
    return "(" + ", ".join(v.astimezone(timezone.utc).isoformat() if isinstance(v, datetime)
                           else repr(v) for v in row) + ")"


def fmt(v):
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    return f"{v:.7g}" if isinstance(v, float) else str(v)


class Fleet:
    """The generated fleet, the writers' history, and what each query may answer."""

    def __init__(self, a):
        self.total = round(a.rate * a.duration)
        n = a.vehicles
        self.vehicles = [Vehicle(a.seed, i + 1, self.total // n + (i < self.total % n))
                         for i in range(n)]
        # History, per vehicle index: the highest seq sent (in flight included), the
        # monotonic time each seq was acknowledged, and the seqs whose outcome is unknown.
        self.sent = [-1] * n
        self.acked_at = [[] for _ in range(n)]
        self.ambiguous = set()  # (vehicle index, seq)
        end = T0 + timedelta(seconds=max(v.reports for v in self.vehicles))
        self.window = (end - timedelta(seconds=WINDOW), end)
        self.in_window = []  # per vehicle: (first seq in the window, speeds in the window)
        self.minutes = []  # per vehicle: [(minute, first seq, last seq + 1)]
        for v in self.vehicles:
            ks = [k for k in range(v.reports) if self.window[0] <= v.ts(k) < self.window[1]]
            self.in_window.append((ks[0] if ks else 0, [v.speed(k) for k in ks]))
            segs = []
            for k in range(v.reports):
                m = v.ts(k).replace(second=0, microsecond=0)
                if segs and segs[-1][0] == m:
                    segs[-1][2] = k + 1
                else:
                    segs.append([m, k, k + 1])
            self.minutes.append(segs)

    def ambiguous_vehicles(self):
        return {i for i, _ in set(self.ambiguous)}

    def bounds_during(self, started, stale):
        """(lo, hi, amb) for a read sent at monotonic `started` and answered just now: each
        vehicle's visible reports are seqs 0..m with lo <= m <= hi (-1: none). The writer
        sends a vehicle's reports one after another, so what a replica applied is a prefix."""
        amb = self.ambiguous_vehicles()
        hi = list(self.sent)  # read after the answer: anything it shows was sent before
        cutoff = started - stale - SLACK  # acknowledged before this: must be visible
        lo = [-1 if i in amb else bisect.bisect_right(t, cutoff) - 1
              for i, t in enumerate(self.acked_at)]
        return lo, hi, amb

    def bounds_final(self):
        amb = self.ambiguous_vehicles()
        hi = [v.reports - 1 for v in self.vehicles]
        lo = [max([k for k in range(h + 1) if (i, k) not in self.ambiguous], default=-1)
              if i in amb else h for i, h in enumerate(hi)]
        return lo, hi, amb

    # Each check returns None, or what is wrong with the answer.

    def vehicle(self, vid, seen):
        if not 1 <= vid <= len(self.vehicles) or (seen and vid <= seen[-1]):
            return None
        seen.append(vid)
        return self.vehicles[vid - 1]

    def sent_report(self, v, seq, row, cols, lo, hi):
        if not max(lo, 0) <= seq <= hi:
            return f"vehicle {v.id}: seq {seq}, expected " + (
                str(hi) if lo == hi else f"between {max(lo, 0)} and {hi}")
        exp = v.report(seq)
        if not all(close(row[c], exp[e]) for c, e in cols):
            return f"row {show(row)} is not what the writer sent: {show(exp)}"

    def check_last(self, rows, lo, hi, amb):
        seen = []
        for r in rows:
            v = self.vehicle(r[0], seen)
            if v is None or r[1] != v.name:
                return f"unexpected row {show(r)}"
            err = self.sent_report(v, r[2], r, [(3, 2), (4, 3), (5, 4), (6, 5)],
                                   lo[v.id - 1], hi[v.id - 1])
            if err:
                return err
        missing = [i + 1 for i in range(len(lo)) if lo[i] >= 0 and i + 1 not in seen]
        return f"no position for vehicles {missing}" if missing else None

    def check_bbox(self, rows, lo, hi, amb):
        def inside(lat, lon):
            return BBOX[0] <= lat <= BBOX[1] and BBOX[2] <= lon <= BBOX[3]

        seen = []
        for r in rows:
            v = self.vehicle(r[0], seen)
            if v is None or not inside(r[2], r[3]):
                return f"unexpected row {show(r)}"
            err = self.sent_report(v, r[1], r, [(2, 3), (3, 4)], lo[v.id - 1], hi[v.id - 1])
            if err:
                return err
        for i, v in enumerate(self.vehicles):  # a settled last position decides membership
            if i not in amb and lo[i] == hi[i] >= 0:
                if inside(*v.report(hi[i])[3:5]) != (v.id in seen):
                    return f"vehicle {v.id} at {v.report(hi[i])[3:5]}: " + (
                        "in the box, missing" if v.id not in seen else "outside, listed")

    def check_speed(self, rows, lo, hi, amb):
        seen = []
        for r in rows:
            v = self.vehicle(r[0], seen)
            if v is None:
                return f"unexpected row {show(r)}"
            i, count = v.id - 1, r[1]
            first, speeds = self.in_window[i]
            if not 1 <= count <= len(speeds):
                return f"vehicle {v.id}: {count} reports in the window, it has {len(speeds)}"
            if i in amb:
                continue
            # Visible reports are a prefix of the vehicle's: 0..m with lo <= m <= hi.
            least, most = (max(0, min(len(speeds), x - first + 1)) for x in (lo[i], hi[i]))
            if not least <= count <= most:
                return f"vehicle {v.id}: {count} reports in the window, expected " + (
                    str(least) if least == most else f"{least}..{most}")
            s = speeds[:count]
            exp = (v.id, count, sum(s) / count, min(s), max(s))
            if not all(close(a, b) for a, b in zip(r, exp)):
                return f"row {show(r)}, expected {show(exp)}"
        for i, (first, speeds) in enumerate(self.in_window):
            if speeds and i not in amb and lo[i] >= first and i + 1 not in seen:
                return f"vehicle {i + 1} missing"

    def check_minutes(self, rows, lo, hi, amb):
        want = {}  # minute -> [at least, at most]
        for i, segs in enumerate(self.minutes):
            for m, a, b in segs:
                w = want.setdefault(m, [0, 0])
                w[0] += 0 if i in amb else max(0, min(lo[i] + 1, b) - a)
                w[1] += max(0, min(hi[i] + 1, b) - a)
        got = [(m.astimezone(timezone.utc), c) for m, c in rows]
        if [m for m, _ in got] != sorted(set(m for m, _ in got)):
            return f"minutes out of order or repeated: {[show(r) for r in rows]}"
        for m, c in got:
            a, b = want.get(m, (0, 0))
            if not a <= c <= b:
                return f"{m:%H:%M}: {c} reports, expected " + (str(a) if a == b else f"{a}..{b}")
        missing = [f"{m:%H:%M}" for m, (a, _) in want.items() if a and m not in dict(got)]
        return f"minutes missing: {missing}" if missing else None

    def check_track(self, rows, lo, hi, amb):
        i, v = TRACK_VEHICLE - 1, self.vehicles[TRACK_VEHICLE - 1]
        for n, r in enumerate(rows):
            if n and r[0] >= rows[n - 1][0]:
                return f"seqs not descending: {[r[0] for r in rows]}"
            exp = v.report(r[0])
            if r[0] > hi[i] or not all(close(a, b, 1e-6 if c == 6 else 1e-9)  # battery: real
                                       for c, (a, b) in enumerate(zip(r, exp[1:]))):
                return f"row {show(r)} is not a report the writer sent: {show(exp)}"
        if i not in amb:
            top = rows[0][0] if rows else -1
            if top < lo[i] or [r[0] for r in rows] != list(range(top, max(top - 5, -1), -1)):
                want = list(range(lo[i], max(lo[i] - 5, -1), -1))
                return f"seqs {[r[0] for r in rows]}, expected {want}" + (
                    "" if lo[i] == hi[i] else f" or later, up to {hi[i]}")

    def queries(self, style):
        """(name, what, sql, params, check) of the fleet queries."""
        v = TRACK_VEHICLE
        return [
            ("last", f"last position of every vehicle ({style})", SQL["last", style], None,
             self.check_last),
            ("bbox", f"vehicles inside the bounding box ({style})", SQL["bbox", style],
             list(BBOX), self.check_bbox),
            ("speed", f"speed per vehicle, last {WINDOW} s simulated", SQL["speed"],
             list(self.window), self.check_speed),
            ("minutes", "fleet reports per minute", SQL["minutes"], None, self.check_minutes),
            ("track", f"latest reports of vehicle {v} (one shard)", SQL["track"], [v],
             self.check_track),
        ]


def verdict(check, rows, bounds):
    """What is wrong with `rows`, if anything (an answer of the wrong shape included)."""
    try:
        return check(rows, *bounds)
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        return f"malformed answer {[show(r) for r in rows[:3]]}: {e!r}"


def connect(url, consistency=None, stale="2s"):
    conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    if consistency:
        conn.execute(f"SET cairn.read_consistency = '{consistency}'")
        if consistency == "bounded":
            conn.execute(f"SET cairn.max_staleness = '{stale}'")
    return conn


def seconds(duration):
    return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration.rstrip("s"))


class Writer(threading.Thread):
    """Writes its own vehicles' reports, paced to its share of --rate on a monotonic clock."""

    def __init__(self, n, a, fleet, plan):
        super().__init__(daemon=True)
        self.n, self.a, self.fleet, self.plan = n, a, fleet, plan
        self.conn, self.attempts, self.retries, self.max_lag, self.error = None, 0, 0, 0.0, None

    def run(self):
        try:
            rate = self.a.rate * len(self.plan) / self.fleet.total
            start = time.monotonic()
            for j in range(0, len(self.plan), self.a.batch):
                lag = time.monotonic() - (start + j / rate)
                if lag < 0:
                    time.sleep(-lag)
                self.max_lag = max(self.max_lag, lag)
                batch = self.plan[j:j + self.a.batch]
                for i, k in batch:
                    self.fleet.sent[i] = k  # before sending: in flight counts as sent
                oks = self.insert([self.fleet.vehicles[i].report(k) for i, k in batch])
                now = time.monotonic()
                for (i, k), ok in zip(batch, oks):
                    if not ok:  # marked first: a reader must never take it as acknowledged
                        self.fleet.ambiguous.add((i, k))
                    self.fleet.acked_at[i].append(now)
        except Exception as e:  # noqa: BLE001 - reported by main
            self.error = e
        finally:
            self.drop()

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def insert(self, rows, maybe_stored=False):
        """Store `rows`; per row, True once it is known to be in the table exactly once,
        False if that stayed unknown for --retry-for seconds (then it is ambiguous: it may
        or may not exist, and the checks leave its vehicle out).

        After a lost connection or SQLSTATE 08007 the statement may or may not have been
        applied, and may even still apply later. Retrying the same INSERT is safe: a row's
        contents depend only on its key, and the primary key (vehicle_id, seq) admits it
        once, so a retry either stores it or fails with 23505 — which then means an earlier
        attempt did store it. A report can never be counted twice."""
        deadline, delay = time.monotonic() + self.a.retry_for, 0.05
        sql = INSERT + ", ".join([ROW] * len(rows))
        while True:
            try:
                if self.conn is None:
                    urls = self.a.urls
                    self.conn = connect(urls[(self.n + self.attempts) % len(urls)])
                self.conn.execute(sql, [x for r in rows for x in r])
                return [True] * len(rows)
            except errors.UniqueViolation:
                if not maybe_stored:
                    raise  # the table had this row before we wrote it
                if len(rows) == 1:
                    return [True]
                # Which rows of the batch got in? Settle them one by one.
                return [ok for r in rows for ok in self.insert([r], True)]
            except RETRYABLE:
                self.attempts += 1
                self.retries += 1
                maybe_stored = True
                self.drop()  # reconnect, to the next URL
            if time.monotonic() > deadline:
                return [False] * len(rows)
            time.sleep(delay)
            delay = min(1.0, delay * 2)


class Reader(threading.Thread):
    """Runs the fleet queries during writing, round-robin over the URLs, with bounded
    staleness, and checks what each answer may be given the writers' history so far."""

    def __init__(self, n, a, fleet, stop, failures):
        super().__init__(daemon=True)
        self.n, self.a, self.fleet, self.stop, self.failures = n, a, fleet, stop, failures
        self.done, self.errors = 0, 0

    def run(self):
        conns, queries, stale = {}, self.fleet.queries(self.a.query_style), seconds(
            self.a.max_staleness)
        i = self.n * len(queries)  # all the queries on one URL, then on the next one
        while not self.stop.is_set():
            url = self.a.urls[i // len(queries) % len(self.a.urls)]
            _, what, sql, params, check = queries[i % len(queries)]
            i += 1
            try:
                if url not in conns:
                    conns[url] = connect(url, "bounded", self.a.max_staleness)
                started = time.monotonic()
                rows = conns[url].execute(sql, params).fetchall()
            except RETRYABLE:  # a node down or a leader change: not a wrong answer
                self.errors += 1
                if url in conns:
                    conns.pop(url).close()
                self.stop.wait(0.2)
                continue
            except psycopg.Error as e:
                self.failures.append(f"{what} on {url}: {e}")
                break
            err = verdict(check, rows, self.fleet.bounds_during(started, stale))
            if err:
                self.failures.append(f"{what} on {url} during writing: {err}")
            self.done += 1
            self.stop.wait(self.a.read_interval)
        for c in conns.values():
            c.close()


def setup(a, fleet):
    """Create the schema (dropping an old one) and the vehicles, then wait until every URL's
    node sees them (on Cairn the catalog reaches the other nodes a moment later)."""
    with connect(a.urls[0]) as c:
        c.execute("DROP TABLE IF EXISTS positions")
        c.execute("DROP TABLE IF EXISTS vehicles")
        schema = (Path(__file__).with_name("schema.sql")).read_text()
        for stmt in schema.split(";"):
            stmt = "\n".join(line.split("--")[0] for line in stmt.splitlines())
            if stmt.strip():
                c.execute(stmt.strip())
        vs = fleet.vehicles
        c.execute("INSERT INTO vehicles (vehicle_id, name, model, depot) VALUES "
                  + ", ".join(["(%s, %s, %s, %s)"] * len(vs)),
                  [x for v in vs for x in (v.id, v.name, v.model, v.depot)])
    deadline = time.monotonic() + 30
    for url in a.urls:
        while True:
            try:
                with connect(url, "bounded", a.max_staleness) as c:
                    if c.execute("SELECT count(*) FROM vehicles").fetchone()[0] == len(vs):
                        break
            except psycopg.Error as e:
                if time.monotonic() > deadline:
                    sys.exit(f"{url} does not see the schema: {e}")
            if time.monotonic() > deadline:
                sys.exit(f"{url} does not see the {len(vs)} vehicles")
            time.sleep(0.2)


def final_checks(a, fleet):
    """The checked answers once the writers are done: (checks, failed)."""
    amb = len(fleet.ambiguous)
    acked = fleet.total - amb
    # Every acknowledged write is committed, so a linearizable read sees them all at once
    # (the loop only rides out a leader change). A bounded read, though, may come from a
    # replica that heard from its leader up to max_staleness ago: it is only sure to include
    # writes acknowledged longer ago than that (plus SLACK for the heartbeat that carried the
    # commit index). So wait that out after the last acknowledgement before the checked reads.
    deadline, checks, failed = time.monotonic() + 30, 0, 0
    while True:
        try:
            with connect(a.urls[0], "linearizable") as c:
                started = time.monotonic()
                n = c.execute(SQL["count"]).fetchone()[0]
                break
        except RETRYABLE as e:
            if time.monotonic() > deadline:
                sys.exit(f"no linearizable read within 30 s: {e}")
            time.sleep(0.5)
    # Ambiguous writes weaken the checks; many of them would leave little checked at all.
    ok = amb <= fleet.total // 100
    checks, failed = checks + 1, failed + (not ok)
    print(f"{'ok  ' if ok else 'FAIL'} {'writes settled (at most 1% ambiguous)':<52} "
          f"{'':>11}  {amb} ambiguous of {fleet.total}")
    ok = acked <= n <= acked + amb
    checks, failed = checks + 1, failed + (not ok)
    print(f"{'ok  ' if ok else 'FAIL'} {'reports stored (linearizable)':<52} "
          f"{(time.monotonic() - started) * 1000:>8.1f} ms  {n}")
    if not ok:
        print(f"     expected {acked}" + (f"..{acked + amb}" if amb else ""))
    last_ack = max((t[-1] for t in fleet.acked_at if t), default=0)
    time.sleep(max(0.0, last_ack + seconds(a.max_staleness) + SLACK - time.monotonic()))
    bounds = fleet.bounds_final()
    for u, url in enumerate(a.urls):
        try:
            c, down = connect(url, "bounded", a.max_staleness), None
        except psycopg.Error as e:
            c, down = None, e
        for _, what, sql, params, check in fleet.queries(a.query_style):
            started, rows = time.monotonic(), []
            try:
                if down:
                    raise down
                rows = c.execute(sql, params).fetchall()
                ms = (time.monotonic() - started) * 1000
                err = verdict(check, rows, bounds)
            except psycopg.Error as e:
                ms, err = (time.monotonic() - started) * 1000, f"{type(e).__name__}: {e}"
            checks, failed = checks + 1, failed + bool(err)
            where = f" @{u + 1}" if len(a.urls) > 1 else ""
            first = "  ".join("|".join(fmt(x) for x in r) for r in rows[:3])
            print(f"{'FAIL' if err else 'ok  '} {what + where:<52} {ms:>8.1f} ms  {first}")
            if err:
                print(f"     {err}")
        if c is not None:
            c.close()
    return checks, failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", help="node URL; repeat or comma-separate "
                   "(default postgres://cairn@127.0.0.1:5433/cairn)")
    p.add_argument("--vehicles", type=int, default=50)
    p.add_argument("--rate", type=float, default=500, help="reports per second, in total")
    p.add_argument("--duration", type=float, default=30, help="seconds of writing")
    p.add_argument("--writers", type=int, default=4, help="each owns a disjoint set of vehicles")
    p.add_argument("--batch", type=int, default=1, help="reports per INSERT statement")
    p.add_argument("--readers", type=int, default=2, help="query threads during writing")
    p.add_argument("--read-interval", type=float, default=0.05, help="pause between queries (s)")
    p.add_argument("--query-style", choices=["distinct-on", "join"], default="distinct-on")
    p.add_argument("--max-staleness", default="2s", help="cairn.max_staleness of the readers")
    p.add_argument("--retry-for", type=float, default=30,
                   help="seconds to retry a write before calling it ambiguous")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CI size: 20 vehicles, 200/s for 5 s")
    a = p.parse_args()
    if a.quick:
        a.vehicles, a.rate, a.duration = 20, 200, 5
    a.urls = [u.strip() for arg in a.url or ["postgres://cairn@127.0.0.1:5433/cairn"]
              for u in arg.split(",") if u.strip()]
    fleet = Fleet(a)
    if fleet.total < a.vehicles:
        sys.exit("--rate x --duration must give every vehicle a report")
    writers_n = min(a.writers, a.vehicles)
    print(f"{a.vehicles} vehicles, {fleet.total} reports at {a.rate:g}/s for {a.duration:g} s, "
          f"{writers_n} writers, batch {a.batch}, {a.readers} readers on {len(a.urls)} URLs, "
          f"{a.query_style}, seed {a.seed}")
    try:
        setup(a, fleet)
    except psycopg.Error as e:
        sys.exit(f"setting up on {a.urls[0]}: {e}")
    plans = [[] for _ in range(writers_n)]
    for g in range(fleet.total):  # the g-th report: vehicle g % N, its seq g // N
        plans[g % a.vehicles % writers_n].append((g % a.vehicles, g // a.vehicles))
    writers = [Writer(n, a, fleet, plan) for n, plan in enumerate(plans)]
    stop, failures = threading.Event(), []
    readers = [Reader(n, a, fleet, stop, failures) for n in range(a.readers)]
    started = time.monotonic()
    for t in writers + readers:
        t.start()
    for w in writers:
        w.join()
    secs = time.monotonic() - started
    stop.set()
    for r in readers:
        r.join()
    for w in writers:
        if w.error:
            sys.exit(f"writer {w.n} failed: {w.error!r}")
    print(f"wrote {fleet.total} reports in {secs:.1f} s ({fleet.total / secs:.0f}/s), "
          f"max lag behind schedule {max(w.max_lag for w in writers) * 1000:.0f} ms, "
          f"{sum(w.retries for w in writers)} retries, {len(fleet.ambiguous)} ambiguous")
    print(f"during writing: {sum(r.done for r in readers)} bounded reads checked, "
          f"{sum(r.errors for r in readers)} retryable errors, {len(failures)} wrong answers")
    for f in failures[:10]:
        print(f"FAIL {f}")
    checks, failed = final_checks(a, fleet)
    if failed or failures:
        sys.exit(f"{failed} of {checks} checks failed, "
                 f"{len(failures)} wrong answers during writing")
    print(f"all {checks} checks passed")


if __name__ == "__main__":
    main()
