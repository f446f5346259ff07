#!/usr/bin/env bash
# pgbench's own initialisation and built-in TPC-B-like script, unmodified, against Cairn or
# PostgreSQL; then checks that the balances of accounts, tellers, branches and the history
# agree. Prints pgbench's report and the check.
#   scripts/pgbench-tpcb.sh [URL] [SCALE] [CLIENTS] [SECONDS]
# Needs psql and pgbench (Debian: postgresql-client and postgresql).
set -euo pipefail
URL=${1:-postgres://cairn@127.0.0.1:5433/cairn}
SCALE=${2:-10}
CLIENTS=${3:-8}
SECS=${4:-60}

echo "== pgbench -i -s $SCALE"
pgbench -i -s "$SCALE" "$URL" 2>&1 | grep -v "tuples (.*done" || true
echo "== pgbench -c $CLIENTS -T $SECS (tpcb-like)"
pgbench -c "$CLIENTS" -j 2 -T "$SECS" -P 10 "$URL"
echo "== balances: accounts | tellers | branches | history deltas | history rows"
sums=$(psql -X -At "$URL" -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)")
echo "$sums"
IFS='|' read -r a t b h _ <<<"$sums"
if [[ "$a" == "$t" && "$t" == "$b" && "$b" == "$h" ]]; then
    echo "balances agree"
else
    echo "BALANCES DISAGREE" >&2
    exit 1
fi
