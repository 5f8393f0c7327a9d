#!/usr/bin/env bash
# VM image benchmark: a qcow2 image holding a real filesystem (ext4 made
# with mkfs.ext4 -d from a copy of parts of /usr), side by side in one run:
#
#   floor         qemu-img convert of the whole image to a local raw file
#                 (the physical read + write floor)
#   full          tessera vm backup, first backup (every allocated chunk)
#   plain file    tessera backup of the image as a plain file (fs adapter)
#   bitmap        after a scattered "day" of writes: the dirty-bitmap backup
#   no bitmap     the same day, another repository: vm backup --full
#   restore raw / restore qcow2 of the newest snapshot
#   stored bytes of the day's backup at 64K / 256K / 1M / 4M chunks
#
#   benches/vm.sh                  4 GiB image
#   VM_SIZE=1G VM_SRC="/usr/share" benches/vm.sh   smaller
#   VM_DAY_WRITES=200              writes in the day (4 to 64 KiB each,
#                                  seeded, over the first half of the disk)
#   VM_REPEAT=3                    rounds of floor / first backup / raw
#                                  restore, alternating; medians shown
#
# Caches are dropped before each timed step when run as root. Prints a
# Markdown table with ratios against the floor.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${VM_WORK:-/tmp/tessera-vmbench}
SIZE=${VM_SIZE:-4G}
SRC=${VM_SRC:-"/usr/share /usr/include /usr/bin /usr/lib/x86_64-linux-gnu"}
WRITES=${VM_DAY_WRITES:-200}
REPEAT=${VM_REPEAT:-3}
export TESSERA_PASSWORD=bench

command -v qemu-img >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-utils >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
T=$ROOT/target/release/tessera

rm -rf "$WORK"
mkdir -p "$WORK/stage"
cd "$WORK"
for d in $SRC; do
  cp -al "$d" "stage/$(basename "$d")" 2>/dev/null || cp -a "$d" "stage/$(basename "$d")"
done
mkfs.ext4 -q -F -d stage fs.raw "$SIZE"
rm -rf stage
qemu-img convert -O qcow2 fs.raw base.qcow2
rm fs.raw
cp base.qcow2 disk.qcow2
DATA=$(qemu-img map --output=json disk.qcow2 | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
VSIZE=$(qemu-img info --output=json disk.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

drop() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
# timed NAME CMD...: seconds into $WORK/NAME.time, output into NAME.out
timed() {
  local name=$1; shift
  drop
  /usr/bin/time -f "%e %M" -o "$name.time" "$@" > "$name.out"
}
secs() { cut -d' ' -f1 "$1.time"; }
# median of NAME.1 .. NAME.REPEAT into NAME.time
median() {
  for i in $(seq 1 "$REPEAT"); do cat "$1.$i.time"; done | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}' > "$1.time"
}
json() { python3 -c "import json,sys; d=json.load(open('$1.out')); print($2)"; }

# A day: scattered writes over the first half of the disk (where ext4 put
# the data), seeded so every repository sees the same day.
day() {
  python3 - "$1" "$VSIZE" "$WRITES" <<'PY' > day.cmds
import random, sys
img, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(20261204)
for _ in range(n):
    length = r.choice([4096, 8192, 16384, 65536])
    off = r.randrange(0, size // 2 // 4096) * 4096
    print(f"write -P {r.randrange(1, 255)} {off} {length}")
PY
  local args=()
  while read -r c; do args+=(-c "$c"); done < day.cmds
  qemu-io -f qcow2 "${args[@]}" "$1" > /dev/null
}

# Floor and first backup alternate; the last round's repository stays.
for i in $(seq 1 "$REPEAT"); do
  timed "floor.$i" qemu-img convert -O raw disk.qcow2 floor.raw
  rm -f floor.raw
  rm -rf repo-a
  "$T" -r repo-a init >/dev/null
  for b in $(qemu-img info --output=json disk.qcow2 | python3 -c 'import json,sys; [print(b["name"]) for b in json.load(sys.stdin).get("format-specific",{}).get("data",{}).get("bitmaps",[])]'); do
    qemu-img bitmap --remove disk.qcow2 "$b"
  done
  timed "full.$i" "$T" -r repo-a vm backup --name bench --disk sda=disk.qcow2 --json
done
median floor
median full
cp full.1.out full.out
"$T" -r repo-b init >/dev/null
"$T" -r repo-plain init >/dev/null
"$T" -r repo-b vm backup --name bench --disk sda=disk.qcow2 --json > /dev/null
timed plain "$T" -r repo-plain backup disk.qcow2 --json
day disk.qcow2
timed bitmap "$T" -r repo-a vm backup --name bench --disk sda=disk.qcow2 --json
timed nobitmap "$T" -r repo-b vm backup --name bench --disk sda=disk.qcow2 --full --json
for i in $(seq 1 "$REPEAT"); do
  rm -f restored.raw
  timed "restore_raw.$i" "$T" -r repo-a vm restore latest --disk sda --target restored.raw --json
done
median restore_raw
timed restore_qcow2 "$T" -r repo-a vm restore latest --disk sda --target restored.qcow2 --format qcow2 --json
qemu-img compare -q -f qcow2 -F raw disk.qcow2 restored.raw
qemu-img compare -q -f qcow2 disk.qcow2 restored.qcow2
rm -f restored.raw restored.qcow2

echo "chunk,full_stored,day_read,day_new,day_stored" > chunks.csv
for cs in 64K 256K 1M 4M; do
  cp base.qcow2 c.qcow2
  "$T" -r "repo-$cs" init >/dev/null
  "$T" -r "repo-$cs" vm backup --name c --disk sda=c.qcow2 --chunk-size "$cs" --json > "c1-$cs.out"
  day c.qcow2
  "$T" -r "repo-$cs" vm backup --name c --disk sda=c.qcow2 --chunk-size "$cs" --json > "c2-$cs.out"
  echo "$cs,$(json "c1-$cs" 'd["stored_bytes"]'),$(json "c2-$cs" 'd["disks"][0]["bytes_read"]'),$(json "c2-$cs" 'd["new_bytes"]'),$(json "c2-$cs" 'd["stored_bytes"]')" >> chunks.csv
  rm -rf "repo-$cs" c.qcow2
done

F=$(secs floor)
ratio() { python3 -c "print(f'{$1/$F:.2f}')"; }
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
echo
echo "Image: $(mib "$VSIZE") MiB virtual, $(mib "$DATA") MiB allocated (ext4 from: $SRC); day: $WRITES writes of 4-64 KiB"
echo
echo "| step | seconds | / floor | read MiB | stored MiB |"
echo "|---|---|---|---|---|"
echo "| qemu-img convert (floor) | $F | 1.00 | | |"
echo "| vm backup, first | $(secs full) | $(ratio "$(secs full)") | $(mib "$(json full 'd["disks"][0]["bytes_read"]')") | $(mib "$(json full 'd["stored_bytes"]')") |"
echo "| backup of the image as a plain file | $(secs plain) | $(ratio "$(secs plain)") | | $(mib "$(json plain 'd["data_added"]')") |"
echo "| day, bitmap | $(secs bitmap) | $(ratio "$(secs bitmap)") | $(mib "$(json bitmap 'd["disks"][0]["bytes_read"]')") | $(mib "$(json bitmap 'd["stored_bytes"]')") |"
echo "| day, no bitmap (--full) | $(secs nobitmap) | $(ratio "$(secs nobitmap)") | $(mib "$(json nobitmap 'd["disks"][0]["bytes_read"]')") | $(mib "$(json nobitmap 'd["stored_bytes"]')") |"
echo "| restore to raw | $(secs restore_raw) | $(ratio "$(secs restore_raw)") | | |"
echo "| restore to qcow2 | $(secs restore_qcow2) | $(ratio "$(secs restore_qcow2)") | | |"
echo
echo "bitmap day / first backup: $(python3 -c "print(f'{$(secs bitmap)/$(secs full)*100:.1f} %')")"
echo
echo "| chunk size | first backup stored MiB | day read MiB | day new MiB | day stored MiB |"
echo "|---|---|---|---|---|"
tail -n +2 chunks.csv | while IFS=, read -r cs a b c d; do
  echo "| $cs | $(mib "$a") | $(mib "$b") | $(mib "$c") | $(mib "$d") |"
done
