#!/usr/bin/env bash
# MongoDB benchmark, side by side in one run against one server:
#
#   read floor     every document of the collection read with the Rust
#                  driver as raw BSON (crates/mongo/examples/read_floor.rs)
#   first backup   tessera mongo backup of the collection
#   second backup  after 1 % of the documents changed: bytes stored
#   restore        tessera mongo restore into another database
#   mongodump / mongorestore of the same, where they are installed
#
#   benches/mongo.sh                     1,000,000 documents on nx-27017
#   MONGO_DOCS=200000 benches/mongo.sh   fewer
#   MONGO_URI=mongodb://… benches/mongo.sh   a real server instead (the
#                                        database tessera_bench is dropped)
#   MONGO_REPEAT=3                       rounds of floor / first backup,
#                                        alternating; medians shown
#   MONGO_CHUNK=2K                       mongo backup --chunk-size (default 4K)
#
# The server here is nx-27017 (PyPI, a MongoDB-wire server over SQLite,
# no real mongod on these machines): it, not the client, sets the pace, so
# the ratio to the floor is what tessera adds on top of reading. Prints a
# Markdown table.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MONGO_WORK:-/tmp/tessera-mongobench}
DOCS=${MONGO_DOCS:-1000000}
REPEAT=${MONGO_REPEAT:-3}
CHUNK=${MONGO_CHUNK:-4K}
export TESSERA_PASSWORD=bench

command -v nx-27017 >/dev/null || python3 -m pip install --quiet 'nx-27017==0.8.1'
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli && cargo build --release --locked -q -p tessera-mongo --example read_floor)
T=$ROOT/target/release/tessera
FLOOR=$ROOT/target/release/examples/read_floor

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
if [ -z "${MONGO_URI:-}" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  nx-27017 --db memory --host 127.0.0.1 -p "$PORT" --log-file nx.log --pid-file nx.pid >/dev/null 2>&1 &
  trap 'kill $(cat nx.pid 2>/dev/null) 2>/dev/null || true' EXIT
  MONGO_URI="mongodb://127.0.0.1:$PORT/?directConnection=true"
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null && break; sleep 0.1; done
fi

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

echo "loading $DOCS documents" >&2
python3 - "$MONGO_URI" "$DOCS" <<'EOF'
import random, sys, pymongo
c = pymongo.MongoClient(sys.argv[1]); n = int(sys.argv[2]); rnd = random.Random(1)
c.drop_database("tessera_bench"); c.drop_database("tessera_bench_restored")
coll = c.tessera_bench.docs; batch = []
for i in range(n):
    batch.append({"_id": i, "name": f"user{i}", "email": f"user{i}@example.org", "age": i % 90,
                  "score": rnd.random(), "tags": ["a", "b", "c"][: i % 3 + 1],
                  "addr": {"city": rnd.choice(["Lyon", "Oslo", "Kyoto", "Quito"]), "zip": f"{i % 100000:05d}"},
                  "bio": " ".join(rnd.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(12))})
    if len(batch) == 10000:
        coll.insert_many(batch, ordered=False); batch = []
if batch:
    coll.insert_many(batch, ordered=False)
EOF

floor=() first=()
for r in $(seq "$REPEAT"); do
  read -r n bytes s < <("$FLOOR" "$MONGO_URI" tessera_bench docs)
  floor+=("$s")
  rm -rf "$WORK/r$r"; "$T" -r "$WORK/r$r" init >/dev/null
  a=$(now); "$T" -r "$WORK/r$r" -q mongo backup --uri "$MONGO_URI" --db tessera_bench --chunk-size "$CHUNK" --json > "first$r.json"; b=$(now)
  first+=("$(secs "$a" "$b")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
F=$(median "${floor[@]}"); B1=$(median "${first[@]}")
first_stored=$(python3 -c "import json; print(json.load(open('first1.json'))['stored_bytes'])")

echo "changing 1 % of the documents" >&2
python3 - "$MONGO_URI" "$DOCS" <<'EOF'
import random, sys, pymongo
c = pymongo.MongoClient(sys.argv[1]); n = int(sys.argv[2]); rnd = random.Random(2)
coll = c.tessera_bench.docs
for i in rnd.sample(range(n), n // 100):
    coll.update_one({"_id": i}, {"$set": {"score": rnd.random(), "changed": True}})
EOF
a=$(now); "$T" -r "$WORK/r1" -q mongo backup --uri "$MONGO_URI" --db tessera_bench --chunk-size "$CHUNK" --json > second.json; b=$(now)
B2=$(secs "$a" "$b")
second_stored=$(python3 -c "import json; print(json.load(open('second.json'))['stored_bytes'])")

a=$(now)
"$T" -r "$WORK/r1" -q mongo restore --uri "$MONGO_URI" --ns-from 'tessera_bench.*' --ns-to 'tessera_bench_restored.*' --json > restore.json
b=$(now)
R=$(secs "$a" "$b")

dump="not installed (skipped)"; mrest="not installed (skipped)"
if command -v mongodump >/dev/null && command -v mongorestore >/dev/null; then
  a=$(now); mongodump --uri "$MONGO_URI" --db tessera_bench --out dump >/dev/null 2>&1; b=$(now); dump="$(secs "$a" "$b") s"
  a=$(now); mongorestore --uri "$MONGO_URI" --nsFrom 'tessera_bench.*' --nsTo 'tessera_bench_dump.*' dump >/dev/null 2>&1; b=$(now); mrest="$(secs "$a" "$b") s"
fi

python3 - "$DOCS" "$bytes" "$F" "$B1" "$B2" "$R" "$first_stored" "$second_stored" "$dump" "$mrest" "${floor[*]}" "${first[*]}" "$CHUNK" <<'EOF'
import sys
docs, bts = int(sys.argv[1]), int(sys.argv[2])
F, B1, B2, R = map(float, sys.argv[3:7]); s1, s2 = int(sys.argv[7]), int(sys.argv[8])
print(f"{docs:,} documents, {bts/1e6:.1f} MB of BSON, chunks of {sys.argv[13]} on average; rounds: floor {sys.argv[11]} s, first backup {sys.argv[12]} s")
print()
print("| step | seconds | documents/s | MB/s | vs floor | stored |")
print("|---|---|---|---|---|---|")
row = lambda name, s, st="": print(f"| {name} | {s:.2f} | {docs/s:,.0f} | {bts/s/1e6:.1f} | {s/F:.2f}x | {st} |")
row("read floor (driver, raw BSON)", F)
row("first backup", B1, f"{s1/1e6:.1f} MB")
row("second backup, 1 % changed", B2, f"{s2/1e6:.2f} MB ({100*s2/s1:.1f} % of the first)")
row("restore (new database)", R)
print(f"| mongodump | {sys.argv[9]} | | | | |")
print(f"| mongorestore | {sys.argv[10]} | | | | |")
EOF
