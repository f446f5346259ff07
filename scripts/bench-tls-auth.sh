#!/usr/bin/env bash
# What TLS and SCRAM logins cost, on a local 3-node cluster (loopback only; stops itself):
#   1. `cairn bench kv` (50 % reads, 16 clients) without TLS, then with --certs-dir;
#   2. 16 pgbench clients running `SELECT 1` on a cluster with users, alone and then while
#      other pgbench clients open a new SCRAM-authenticated connection per transaction
#      (`pgbench -C`): the 16 clients' p50/p99 before and during, and the login rate.
#
#   scripts/bench-tls-auth.sh [--duration 15]      # needs target/release/cairn and pgbench
set -euo pipefail
cd "$(dirname "$0")/.."
duration=15
[ "${1:-}" = --duration ] && duration="$2"
bin=target/release/cairn
[ -x "$bin" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "pgbench is needed (Debian: postgresql)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
trap 'stop; rm -rf "$work"' EXIT

# start_cluster NAME EXTRA...: three nodes on 127.0.0.1, ports 455x3/485x0/475x0.
start_cluster() {
    local name="$1"; shift
    for i in 1 2 3; do
        local join=()
        [ "$i" -gt 1 ] && join=(--join 127.0.0.1:47501)
        "$bin" start --data-dir "$work/$name/n$i" \
            --pg-addr "127.0.0.1:4553$i" --http-addr "127.0.0.1:4850$i" \
            --cluster-addr "127.0.0.1:4750$i" "${join[@]}" "$@" \
            > "$work/$name-n$i.log" 2>&1 &
        pids+=($!)
        sleep 1
    done
    sleep 5
}

"$bin" cert create-ca --certs-dir "$work/certs" >/dev/null
"$bin" cert create-node localhost 127.0.0.1 --certs-dir "$work/certs" >/dev/null

echo "== kv, 16 clients, ${duration}s, plain"
start_cluster plain
"$bin" bench kv --url "postgres://cairn@127.0.0.1:45531/cairn" --clients 16 --duration "${duration}s" --warmup 3s
stop

echo "== kv, 16 clients, ${duration}s, TLS (verify-full)"
start_cluster tls --certs-dir "$work/certs"
"$bin" bench kv --url "postgres://cairn@localhost:45531/cairn?sslmode=verify-full&sslrootcert=$work/certs/ca.crt" \
    --clients 16 --duration "${duration}s" --warmup 3s
stop

echo "== logins: 16 clients of SELECT 1, alone and during a storm of SCRAM logins"
export PGPASSWORD=bench-admin-pw
CAIRN_INIT_PASSWORD="$PGPASSWORD" start_cluster auth
echo 'SELECT 1;' > "$work/select1.sql"
url="host=127.0.0.1 port=45531 user=admin dbname=cairn"
p99() { # pgbench -l files: the 3rd field is the latency in µs
    cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "p50 %.2f ms, p99 %.2f ms (%d transactions)\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, NR}'
}
(cd "$work" && pgbench -n -f select1.sql -c 16 -j 2 -T "$duration" -l --log-prefix=alone "$url" > alone.out 2>&1)
echo "alone:  $(p99 "$work"/alone.*)"
(cd "$work" && pgbench -n -C -f select1.sql -c 8 -j 2 -T "$duration" "$url" > storm.out 2>&1) &
storm=$!
(cd "$work" && pgbench -n -f select1.sql -c 16 -j 2 -T "$duration" -l --log-prefix=during "$url" > during.out 2>&1)
wait "$storm"
echo "during: $(p99 "$work"/during.*)"
echo "logins: $(grep -E '^tps' "$work/storm.out" | head -1) (each transaction a new connection with SCRAM)"
grep -E 'average connection time' "$work/storm.out" || true
stop
