#!/usr/bin/env bash
# Single-row INSERT and point SELECT throughput over pgwire with pgbench, at 1, 8 and 32
# clients. Works against Cairn or any PostgreSQL server.
#   scripts/bench-pgbench.sh [URL] [SECONDS]
# Needs psql and pgbench (Debian: postgresql-client, postgresql-contrib or postgresql).
set -euo pipefail
URL=${1:-postgres://cairn@127.0.0.1:5433/cairn}
SECS=${2:-10}
ROWS=100000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

psql -X -q "$URL" -c "DROP TABLE IF EXISTS bench_kv" -c "CREATE TABLE bench_kv (k integer PRIMARY KEY, v text)"
psql -X -q "$URL" -c "INSERT INTO bench_kv SELECT x, 'value-' || x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS) SELECT x FROM c) s"

cat > "$work/insert.sql" <<'SQL'
\set k random(1000000, 2000000000)
INSERT INTO bench_kv (k, v) VALUES (:k, 'inserted') ON CONFLICT (k) DO NOTHING;
SQL
cat > "$work/select.sql" <<SQL
\set k random(1, $ROWS)
SELECT v FROM bench_kv WHERE k = :k;
SQL

printf "%-8s %8s %10s %12s\n" workload clients tps "latency ms"
for w in insert select; do
    for c in 1 8 32; do
        out=$(pgbench -n -M prepared -c "$c" -j 2 -T "$SECS" -f "$work/$w.sql" "$URL" 2>&1)
        tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        printf "%-8s %8s %10s %12s\n" "$w" "$c" "$tps" "$lat"
    done
done
