#!/usr/bin/env bash
# tessera against pgBackRest 2.45 (Debian) on one PostgreSQL 15 cluster, in
# one run: full backup, second full backup after 10,000 pgbench transactions (time and
# added repository size), WAL archiving (64 real segments pushed the way
# PostgreSQL calls archive_command, and live under pgbench at full speed),
# and restore of the data directory. Both tools encrypt and compress with
# zstd level 3; pgBackRest runs with process-max=2 (both cores).
#
#   benches/pg.sh                 pgbench scale 50 (~750 MB of data)
#   PG_BENCH_SCALE=10 benches/pg.sh
# Runs as root (PostgreSQL and both tools then run as `postgres`) or as the
# user owning the cluster.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PG_BENCH_WORK:-/tmp/tessera-pg-bench}
SCALE=${PG_BENCH_SCALE:-50}
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest >/dev/null; }
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)

AS=(); [ "$(id -u)" -eq 0 ] && AS=(runuser -u postgres --)
rm -rf "$WORK"; mkdir -p "$WORK/pgbackrest-log"; cp "$ROOT/target/release/tessera" "$WORK/tessera"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/env.sh" <<EOS
export TESSERA_REPO=$WORK/tessera-repo TESSERA_PASSWORD_FILE=$WORK/pass TESSERA_CACHE_DIR=$WORK/cache
export PGHOST=$WORK PGPORT=$PORT PGUSER=postgres PATH=$BIN:\$PATH
export PGBACKREST_CONFIG=$WORK/pgbackrest.conf PGBACKREST_STANZA=bench
EOS
cat >"$WORK/pgbackrest.conf" <<EOS
[global]
repo1-path=$WORK/pgbackrest-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-cipher-pass
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-path=$WORK/pgbackrest-log
lock-path=$WORK/pgbackrest-lock
spool-path=$WORK/pgbackrest-spool
archive-async=y
log-level-console=warn

[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=$PORT

[arch]
repo1-path=$WORK/pgbackrest-arch
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=$PORT
EOS
[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK/env.sh" "$WORK/pgbackrest.conf"
run() { "${AS[@]}" bash -c ". $WORK/env.sh; cd $WORK; $1"; }
secs() { local t0 t1; t0=$(date +%s.%N); run "$1" >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log"; exit 1; }; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
size() { du -sb "$1" | cut -f1; }
ratio() { echo "scale=2; $1 / $2" | bc; }

run "echo bench-password > pass; ./tessera init -q >/dev/null"
run "initdb -D data -A trust -U postgres --data-checksums >/dev/null"
run "cat >> data/postgresql.conf <<EOC
listen_addresses = ''
port = $PORT
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '. $WORK/env.sh; ./../tessera pg archive-wal %p && pgbackrest archive-push %p'
max_wal_senders = 4
max_wal_size = 4GB
EOC"
run "pg_ctl -D data -l server.log -w start >/dev/null"
trap 'run "pg_ctl -D data -m immediate stop" >/dev/null 2>&1 || true' EXIT
run "pgbackrest stanza-create && pgbackrest --stanza=arch stanza-create"
run "pgbench -i -s $SCALE -q postgres >/dev/null 2>&1"
DB_MB=$(run "psql -XAtc \"select pg_database_size('postgres') / 1000000\"")
echo "database: pgbench scale $SCALE, $DB_MB MB"

T1=$(secs "./tessera pg backup -q")
P1=$(secs "pgbackrest --type=full backup")
TS1=$(size "$WORK/tessera-repo"); PS1=$(size "$WORK/pgbackrest-repo")
run "pgbench -t 5000 -c 2 -j 2 postgres >/dev/null 2>&1"
T2=$(secs "./tessera pg backup --json > second.json")
P2=$(secs "pgbackrest --type=full backup")
PI=$(secs "pgbackrest --type=incr backup")
TS2=$(size "$WORK/tessera-repo"); PS2=$(size "$WORK/pgbackrest-repo")
echo "| step | tessera | pgBackRest | tessera/pgBackRest |"
echo "|---|---|---|---|"
echo "| full backup (s) | $T1 | $P1 | $(ratio "$T1" "$P1") |"
echo "| second full after 10,000 pgbench transactions (s) | $T2 | $P2 | $(ratio "$T2" "$P2") |"
echo "| repository after first full (MB) | $((TS1 / 1000000)) | $((PS1 / 1000000)) | $(ratio "$TS1" "$PS1") |"
echo "| added by the second full (MB, WAL included) | $(((TS2 - TS1) / 1000000)) | $(((PS2 - PS1) / 1000000)) | $(ratio "$((TS2 - TS1))" "$((PS2 - PS1))") |"
TB=$(run "python3 -c 'import json; print(json.load(open(\"second.json\"))[\"stored_bytes\"])'")
PB=$(run "pgbackrest info --output=json" | python3 -c 'import json,sys; b=json.load(sys.stdin)[0]["backup"]; print([x for x in b if x["type"]=="full"][-1]["info"]["repository"]["delta"])')
echo "| stored for the second full's data files alone (MB) | $(echo "scale=1; $TB / 1000000" | bc) | $(echo "scale=1; $PB / 1000000" | bc) | $(ratio "$TB" "$PB") |"
echo "| (pgBackRest incremental after that: $PI s) | | | |"

# Live: pgbench at full speed for 30 s with one tool's archive_command; WAL
# written, segments still waiting when pgbench stops, and time to drain.
live() {
  run "psql -XAtqc \"alter system set archive_command = '$1'\" -c 'select pg_reload_conf()'" >/dev/null
  run "psql -XAtqc 'select pg_switch_wal()' -c checkpoint" >/dev/null; sleep 2
  local start; start=$(run "psql -XAtc 'select pg_current_wal_lsn()'")
  run "pgbench -T 30 -c 4 -j 2 postgres >/dev/null 2>&1"
  local end seg; end=$(run "psql -XAtc 'select pg_current_wal_lsn()'")
  seg=$(run "psql -XAtc 'select pg_walfile_name(pg_switch_wal())'")
  local waiting; waiting=$(run "ls data/pg_wal/archive_status | grep -c ready || true")
  local t0 t1; t0=$(date +%s.%N)
  until [ "$(run "psql -XAtc \"select coalesce(last_archived_wal, '') >= '$seg' from pg_stat_archiver\"")" = t ]; do sleep 0.2; done
  t1=$(date +%s.%N)
  local mb; mb=$(run "psql -XAtc \"select (pg_wal_lsn_diff('$end', '$start') / 1000000)::int\"")
  echo "$mb MB of WAL, $waiting waiting at the end, drained in $(echo "$t1 - $t0" | bc | cut -c1-5) s"
}
echo "| live: 30 s of pgbench -c 4 | $(live ". $WORK/env.sh; ./../tessera pg archive-wal %p") | $(live ". $WORK/env.sh; pgbackrest archive-push %p") (async) | |"
run "psql -XAtqc \"alter system set archive_command = '. $WORK/env.sh; ./../tessera pg archive-wal %p && pgbackrest archive-push %p'\" -c 'select pg_reload_conf()'" >/dev/null

# WAL: 64 real segments of this cluster, pushed one call per file as
# PostgreSQL does, into fresh repositories; `.ready` files beside them as
# in pg_wal (tessera's daemon reads ahead; pgBackRest async only works on
# the cluster's own pg_wal, so it runs in sync mode here and async below).
cat >"$WORK/segnames.py" <<'EOS'
import json, sys
doc = json.load(sys.stdin)
bases = doc["base_backups"]
def segno(lsn):
    hi, lo = lsn.split("/")
    return ((int(hi, 16) << 32) | int(lo, 16)) >> 24
first, last = segno(bases[0]["start_lsn"]), segno(bases[-1]["start_lsn"])
wal = doc["wal"][0]["last_segment"]
last = int(wal[8:16], 16) * 256 + int(wal[16:24], 16)
for n in range(first, min(last, first + 64)):
    print("%08X%08X%08X" % (1, n >> 8, n & 0xFF))
EOS
run "mkdir -p segs/archive_status && for f in \$(./tessera pg list --json | python3 segnames.py); do ./tessera pg restore-wal --pgdata data \$f $WORK/segs/\$f && touch segs/archive_status/\$f.ready; done"
N=$(run "ls segs | grep -cE '^[0-9A-F]{24}\$'")
run "TESSERA_REPO=$WORK/tessera-arch ./tessera init -q >/dev/null"
TA=$(secs "export TESSERA_REPO=$WORK/tessera-arch; for f in \$(ls segs | grep -E '^[0-9A-F]{24}\$'); do ./tessera pg archive-wal --pgdata data $WORK/segs/\$f || exit 1; mv segs/archive_status/\$f.ready segs/archive_status/\$f.done; done")
PA=$(secs "for f in \$(ls segs | grep -E '^[0-9A-F]{24}\$'); do pgbackrest --stanza=arch --archive-async=n archive-push $WORK/segs/\$f || exit 1; done")
MBW=$((N * 16))
echo "| archive $N segments one call each (s) | $TA ($(echo "$MBW / $TA" | bc) MB/s) | $PA ($(echo "$MBW / $PA" | bc) MB/s, sync) | $(ratio "$TA" "$PA") |"

# Restore of the data directory (the newest full of each).
TR=$(secs "./tessera pg restore -q --target $WORK/restore-tessera")
PR=$(secs "pgbackrest restore --pg1-path=$WORK/restore-pgbackrest")
echo "| restore data directory (s) | $TR | $PR | $(ratio "$TR" "$PR") |"
run "diff -rq --exclude=postgresql.auto.conf --exclude=recovery.signal --exclude=backup_label* --exclude=pg_wal $WORK/restore-tessera $WORK/restore-pgbackrest >/dev/null 2>&1" || echo "(the two restores differ in files other than recovery settings: expected only where the two backups were taken at different moments)"
