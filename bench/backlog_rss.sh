#!/usr/bin/env bash
# Goal (e) of docs/benchmarks.md: node memory while a backlog sits on disk.
# A fresh 3-node deploy/local-cluster.sh cluster, one queue, a backlog of
# COUNT x SIZE-byte messages published, left idle, then consumed; every
# second VmRSS, RssAnon and RssFile of each raftmqd come from
# /proc/PID/status into rss.csv, and the maxima per phase are printed.
#
# Usage: bench/backlog_rss.sh [--bin DIR] [--dir DIR] [--port-base B]
#          [--count N] [--size BYTES] [--idle S] [--kill-node N]
#
#   --bin DIR        raftmqd and raftmq (default build/bin)
#   --dir DIR        cluster dir, wiped first (default results/backlog-rss)
#   --port-base B    RAFTMQ_PORT_BASE of local-cluster.sh (default 7100)
#   --count N        messages (default 1000000); --size BYTES (default 1024)
#   --idle S         seconds between publish and consume (default 10)
#   --kill-node N    SIGKILL node N 15 s into the publish, restart it once
#                    the publish is over (it then catches up, by a state
#                    fetch if it fell behind a snapshot)
#
# Prints one line per node and phase: max VmRSS, RssAnon, RssFile in MiB.
# The cluster is stopped on exit; its dir (logs, rss.csv) is kept.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$REPO/build/bin
dir=$REPO/results/backlog-rss
port_base=7100
count=1000000
size=1024
idle=10
kill_node=""

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "$1"
}

while (($# > 0)); do
	case $1 in
	--bin) bin=$2; shift ;;
	--dir) dir=$2; shift ;;
	--port-base) port_base=$2; shift ;;
	--count) count=$2; shift ;;
	--size) size=$2; shift ;;
	--idle) idle=$2; shift ;;
	--kill-node) kill_node=$2; shift ;;
	-h | --help) usage 0 ;;
	*) echo "backlog_rss: unknown option $1" >&2; usage 2 ;;
	esac
	shift
done

export RAFTMQ_BIN=$bin RAFTMQ_DIR=$dir RAFTMQ_PORT_BASE=$port_base
LC=$REPO/deploy/local-cluster.sh
servers=127.0.0.1:$((port_base + 1)),127.0.0.1:$((port_base + 2)),127.0.0.1:$((port_base + 3))
rmq() { "$bin/raftmq" --servers "$servers" "$@"; }

phase=setup
sampler=""
cleanup() {
	[[ -n $sampler ]] && kill "$sampler" 2>/dev/null || true
	"$LC" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$dir"
mkdir -p "$dir"
"$LC" start >/dev/null

# phase file: the sampler tags each row with the current phase.
echo setup >"$dir/phase"
echo "t,phase,node,vmrss_kb,rssanon_kb,rssfile_kb" >"$dir/rss.csv"
(
	t0=$(date +%s)
	while :; do
		p=$(cat "$dir/phase")
		for n in 1 2 3; do
			pid=$(cat "$dir/node$n.pid" 2>/dev/null || true)
			[[ -n $pid && -r /proc/$pid/status ]] || continue
			awk -v t=$(($(date +%s) - t0)) -v p="$p" -v n="$n" '
				/^VmRSS:/ {v=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2}
				END {if (v != "") print t "," p "," n "," v "," a "," f}' \
				"/proc/$pid/status" >>"$dir/rss.csv" || true
		done
		sleep 1
	done
) &
sampler=$!

set_phase() { phase=$1; echo "$1" >"$dir/phase"; }

rmq queue declare big >/dev/null
set_phase publish
start=$(date +%s.%N)
if [[ -n $kill_node ]]; then
	(sleep 15 && "$LC" kill "$kill_node" >/dev/null) &
	killer=$!
fi
rmq publish big --count "$count" --size "$size" --window 1000 >"$dir/publish.out"
pub_s=$(echo "$(date +%s.%N) - $start" | bc)
if [[ -n $kill_node ]]; then
	wait "$killer" || true
	"$LC" restart "$kill_node" >/dev/null
fi
set_phase idle
sleep "$idle"
set_phase consume
start=$(date +%s.%N)
rmq consume big --count "$count" --prefetch 1000 --idle-timeout 30 2>"$dir/consume.out"
con_s=$(echo "$(date +%s.%N) - $start" | bc)
set_phase after
sleep 3
again=$(rmq consume big --idle-timeout 3 2>&1 >/dev/null | tail -1 || true)

echo "publish: $(tail -1 "$dir/publish.out") (${pub_s%.*} s)"
echo "consume: $(tail -1 "$dir/consume.out") (${con_s%.*} s); a second consume: $again"
grep -h "fetched from node" "$dir"/node*.log || true
python3 - "$dir/rss.csv" <<'EOF'
import csv, sys
m = {}
for r in csv.DictReader(open(sys.argv[1])):
    k = (r["node"], r["phase"])
    cur = m.setdefault(k, [0, 0, 0])
    for i, f in enumerate(("vmrss_kb", "rssanon_kb", "rssfile_kb")):
        cur[i] = max(cur[i], int(r[f]))
for node in sorted({k[0] for k in m}):
    print("node %s: " % node + "; ".join(
        "%s max VmRSS %d MiB (anon %d, file %d)" % ((p,) + tuple(v // 1024 for v in m[(node, p)]))
        for p in ("publish", "idle", "consume") if (node, p) in m))
EOF
