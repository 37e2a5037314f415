#!/usr/bin/env bash
# Chaos run: a fresh 3-node cluster (node N on 127.0.0.N), the workload,
# faults from a seeded schedule, heal, drain, check.
#
# Usage: tests/chaos/run.sh [--duration S] [--nemesis LIST] [--seed N]
#          [--keep] [--bin DIR] [--results DIR] [--port-base B]
#          [--rate R] [--producers P] [--consumers C] [--queues Q]
#          [--drain-max S] [--min-availability X]
#
#   --duration S    publish phase in seconds (default 60); faults run from
#                   a warm-up (min(10, S/5) s) to S - min(10, S/6)
#   --nemesis LIST  comma-separated: kill pause partition loss delay disk
#                   diskfull restart-all membership, or "all" (every one
#                   but membership), or "none" (default kill,pause,partition);
#                   membership goes with any but delay and diskfull
#   --seed N        seeds the fault schedule (default: from the clock,
#                   printed); same seed => same schedule (times, kinds,
#                   modes, node numbers; a "leader" target is resolved
#                   when the fault starts)
#   --keep          keep the results dir even when the run passes
#   --bin DIR       raftmqd, raftmq, raftmq-chaos-workload (default
#                   build/bin, else build-chaos/bin)
#   --results DIR   parent of the run dirs (default results/ in the repo)
#   --min-availability X   also fail if availability < X
#
# Prints the checker's summary as its last line:
#   lost=<n> phantom=<n> dup=<n> reordered=<n> confirmed=<n> availability=<x>
# Exit status: 0 clean; 1 a violation, a node that died on its own, a
# cluster that did not recover, or a membership step that did not finish;
# 2 usage or setup error. The run dir
# (history.jsonl, nemesis.jsonl, schedule.txt, node logs and data) is
# removed on success unless --keep, kept and printed otherwise. Every
# process is stopped by pid and the nftables table removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

ALL_NEMESES=(kill pause partition loss delay disk diskfull restart-all)
# Not in "all": delay's proxy and diskfull's small file system are set up
# for nodes 1..3 only, and the long runs of "all" stay comparable.
OTHER_NEMESES=(membership)
duration=60
nemesis=kill,pause,partition
seed=""
keep=0
bin=""
results=$REPO/results
rate=100
producers=6
consumers=2
queues=3
drain_max=120
min_avail=""

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&"${2:-2}"
	exit "$1"
}

while (($# > 0)); do
	case $1 in
	--duration) duration=$2; shift ;;
	--nemesis) nemesis=$2; shift ;;
	--seed) seed=$2; shift ;;
	--keep) keep=1 ;;
	--bin) bin=$2; shift ;;
	--results) results=$2; shift ;;
	--port-base) CHAOS_PORT_BASE=$2; shift ;;
	--rate) rate=$2; shift ;;
	--producers) producers=$2; shift ;;
	--consumers) consumers=$2; shift ;;
	--queues) queues=$2; shift ;;
	--drain-max) drain_max=$2; shift ;;
	--min-availability) min_avail=$2; shift ;;
	-h | --help) usage 0 1 ;;
	*) echo "run.sh: unknown option $1" >&2; usage 2 ;;
	esac
	shift
done

[[ $duration =~ ^[0-9]+$ ]] || { echo "run.sh: bad --duration" >&2; exit 2; }
[[ $CHAOS_PORT_BASE =~ ^[0-9]+$ ]] || { echo "run.sh: bad --port-base" >&2; exit 2; }
CHAOS_NFT_TABLE="inet raftmq_chaos_$CHAOS_PORT_BASE"
export CHAOS_NFT_TABLE
[[ -z $seed ]] && seed=$(($(date +%s%N) % 1000000007))
[[ $seed =~ ^[0-9]+$ ]] || { echo "run.sh: bad --seed" >&2; exit 2; }
[[ $nemesis == all ]] && nemesis=$(IFS=,; echo "${ALL_NEMESES[*]}")
[[ $nemesis == none ]] && nemesis=""
IFS=, read -r -a nemeses <<<"$nemesis"
for n in ${nemeses[@]+"${nemeses[@]}"}; do
	[[ " ${ALL_NEMESES[*]} ${OTHER_NEMESES[*]} " == *" $n "* ]] ||
		{ echo "run.sh: unknown nemesis $n" >&2; exit 2; }
done
has_nemesis() { [[ ",$nemesis," == *",$1,"* ]]; }
# The proxy listens for nodes 1..3 only, and diskfull's file system is
# node 3's data dir: neither follows nodes that come and go.
for n in delay diskfull; do
	if has_nemesis membership && has_nemesis "$n"; then
		echo "run.sh: nemesis membership does not go with $n" >&2
		exit 2
	fi
done

if [[ -z $bin ]]; then
	bin=$REPO/build/bin
	[[ -x $bin/raftmq-chaos-workload ]] || bin=$REPO/build-chaos/bin
fi
CHAOS_BIN=$(cd "$bin" && pwd)
for b in raftmqd raftmq raftmq-chaos-workload; do
	[[ -x $CHAOS_BIN/$b ]] || { echo "run.sh: no $b in $CHAOS_BIN" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || c_log "warning: not root: nftables and loop mounts will fail"

mkdir -p "$results"
CHAOS_DIR=$(cd "$results" && pwd)/$(date -u +%Y%m%dT%H%M%SZ)-seed$seed-${nemesis//,/+}
CHAOS_DIR=${CHAOS_DIR%-}
mkdir -p "$CHAOS_DIR"
: >"$CHAOS_DIR/nemesis.jsonl"
printf '%s member\n' "${CHAOS_INITIAL_NODES[@]}" >"$CHAOS_DIR/members"
export CHAOS_DIR CHAOS_BIN CHAOS_PORT_BASE
export CHAOS_EXTRA_CONFIG=${CHAOS_EXTRA_CONFIG:-}
# Sanitized builds: a known libraft 0.15 leak at shutdown (lsan.supp).
export LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$HERE/lsan.supp
export CHAOS_PROXY=0
workload_pid=""
proxy_pid=""
loop_mnt=""
status=2
crashed=()

cleanup() {
	local rc=$? n
	trap - EXIT INT TERM
	for n in ${nemeses[@]+"${nemeses[@]}"}; do
		"$HERE/nemesis/$n.sh" abort >/dev/null 2>&1 || true
		"$HERE/nemesis/$n.sh" heal >/dev/null 2>&1 || true
	done
	nft_remove_table
	[[ -n $workload_pid ]] && kill -KILL "$workload_pid" 2>/dev/null || true
	stop_all
	[[ -n $proxy_pid ]] && kill -KILL "$proxy_pid" 2>/dev/null || true
	if [[ -n $loop_mnt ]]; then
		umount "$loop_mnt" 2>/dev/null || umount -l "$loop_mnt" 2>/dev/null || true
	fi
	((rc == 0)) && rc=$status
	if ((rc == 0 && keep == 0)); then
		rm -rf "$CHAOS_DIR"
	else
		c_log "results kept in $CHAOS_DIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

c_log "seed $seed, nemesis '${nemesis:-none}', duration ${duration}s, dir $CHAOS_DIR"

# ---- Cluster -------------------------------------------------------------
nft_remove_table
if has_nemesis delay; then
	CHAOS_PROXY=1
	: >"$CHAOS_DIR/proxy.conf"
	python3 "$HERE/proxy.py" --port-base "$CHAOS_PORT_BASE" \
		--config "$CHAOS_DIR/proxy.conf" >"$CHAOS_DIR/proxy.log" 2>&1 &
	proxy_pid=$!
	disown "$proxy_pid" 2>/dev/null || true
	sleep 0.5
fi
if has_nemesis disk; then
	# Every node runs under libfiu (the ones added later too); the
	# nemesis turns failures on by pid.
	export CHAOS_FIU=1
fi
if has_nemesis diskfull; then
	# Node 3's data dir is a small ext4 file system of its own.
	truncate -s "${CHAOS_DISK_MB:-400}M" "$CHAOS_DIR/node3.img"
	mkfs.ext4 -q -F "$CHAOS_DIR/node3.img"
	mkdir -p "$CHAOS_DIR/node3"
	mount -o loop "$CHAOS_DIR/node3.img" "$CHAOS_DIR/node3"
	loop_mnt=$CHAOS_DIR/node3
fi
for n in "${CHAOS_NODES[@]}"; do start_node "$n"; done
wait_ready 60 || { status=2; exit 2; }
c_log "cluster ready: $(chaos_servers)"

# ---- Schedule ------------------------------------------------------------
python3 - "$seed" "$duration" "$nemesis" >"$CHAOS_DIR/schedule.txt" <<'PY'
import random, sys
seed, duration, names = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
names = [n for n in names.split(",") if n]
rng = random.Random(seed)
warm = max(3.0, min(10.0, duration / 5))
end = duration - max(3.0, min(10.0, duration / 6))
t = warm
def target():
    return "leader" if rng.random() < 0.5 else str(rng.randint(1, 3))
while names and t < end:
    n = rng.choice(names)
    if n == "kill":
        hold, args = rng.uniform(1, 6), [target()]
    elif n == "pause":
        hold, args = rng.uniform(2.5, 8), [target()]
    elif n == "partition":
        hold = rng.uniform(3, 10)
        args = [rng.choice(["isolate", "isolate", "bridge", "oneway"]), target()]
    elif n == "loss":
        hold = rng.uniform(5, 12)
        args = [str(rng.choice([10, 20, 30, 50])), rng.choice(["all", target()])]
    elif n == "delay":
        hold = rng.uniform(5, 12)
        args = [str(rng.choice([20, 50, 100, 300])), str(rng.choice([0, 20, 100])),
                rng.choice(["all", target()])]
    elif n == "disk":
        hold = rng.uniform(3, 8)
        args = [rng.choice(["0.01", "0.05", "0.2"]), target()]
    elif n == "diskfull":
        hold, args = rng.uniform(3, 8), []
    elif n == "restart-all":
        hold, args = rng.uniform(0.5, 3), []
    elif n == "membership":
        # The step (1-3 s unloaded) goes on in the background after the
        # window, and the next fault follows soon: it often lands in the
        # middle of the change.
        hold = rng.uniform(0.5, 2)
        args = [rng.choice(["oldest", "leader", "meta", "random"])]
    hold = min(hold, max(1.0, end - t))
    print("%.1f %.1f %s %s" % (t, hold, n, " ".join(args)))
    t += hold + (rng.uniform(0.2, 2) if n == "membership" else rng.uniform(2, 5))
PY
c_log "schedule: $(wc -l <"$CHAOS_DIR/schedule.txt") fault(s) (schedule.txt)"

# ---- Workload and faults -------------------------------------------------
"$CHAOS_BIN/raftmq-chaos-workload" --servers "$(chaos_servers)" \
	--producers "$producers" --consumers "$consumers" --queues "$queues" \
	--rate "$rate" --duration "$duration" --drain-idle 3 \
	--drain-max "$drain_max" --seed "$seed" \
	--history "$CHAOS_DIR/history.jsonl" 2>"$CHAOS_DIR/workload.log" &
workload_pid=$!
t_start=$(date +%s.%N)
NEM_RANDOM_BASE=$seed

# check_down N NEMESIS (under members_locked): node N was found not
# running after NEMESIS healed; unless it has been removed from the
# cluster meanwhile, that is a finding (but see the fail-stop below), and
# it is restarted.
check_down() {
	local n=$1 name=$2 last_exit
	[[ $(node_state "$n") != removed ]] || return 0
	[[ -z $(node_pid "$n") ]] || return 0
	# Under disk faults a node that cannot apply, or whose disk is
	# nearly full (min_free_disk_mb), stops itself (exit 1, "exiting so
	# that the other replicas take over"): that fail-stop is the designed
	# behaviour, not a finding.
	last_exit=$(grep -a '^==== chaos: raftmqd exited' \
		"$CHAOS_DIR/node$n.log" | tail -n 1)
	if [[ $name == disk* && $last_exit == *"status 1 "* ]] &&
		grep -aq 'exiting so that the other replicas take over' \
			"$CHAOS_DIR/node$n.log"; then
		c_log "node $n stopped itself after $name (fail-stop): restarting it"
	else
		c_log "node $n is not running after $name: restarting it"
		crashed+=("$n")
	fi
	start_node "$n"
}

elapsed() { python3 -c "import sys,time; print(time.time()-float(sys.argv[1]))" "$t_start"; }
sleep_until() {
	local d
	d=$(python3 -c "import sys,time; print(max(0.0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))" "$t_start" "$1")
	sleep "$d"
}

i=0
while read -r at hold name args; do
	kill -0 "$workload_pid" 2>/dev/null || break
	sleep_until "$at"
	i=$((i + 1))
	# shellcheck disable=SC2086
	NEM_RANDOM=$(((NEM_RANDOM_BASE + i) % 32768)) \
		"$HERE/nemesis/$name.sh" start $args ||
		c_log "nemesis $name start failed"
	sleep "$hold"
	"$HERE/nemesis/$name.sh" heal || c_log "nemesis $name heal failed"
	# A node that died on its own (not one we killed) is a finding.
	chaos_refresh_nodes
	for n in "${CHAOS_NODES[@]}"; do
		if [[ -z $(node_pid_wait "$n" 5) && ! -f $CHAOS_DIR/nemesis-kill.state &&
			! -f $CHAOS_DIR/nemesis-restart-all.state ]]; then
			members_locked check_down "$n" "$name"
		fi
	done
done <"$CHAOS_DIR/schedule.txt"
settle_ok=1
for n in ${nemeses[@]+"${nemeses[@]}"}; do
	"$HERE/nemesis/$n.sh" settle || settle_ok=0
	"$HERE/nemesis/$n.sh" heal
done
chaos_refresh_nodes
nft_remove_table
c_log "faults over at t=$(elapsed | cut -d. -f1)s; waiting for recovery"
recovered=1
wait_ready 60 || recovered=0

# Publish phase end + drain + confirms that may take publish_timeout.
deadline=$((SECONDS + duration + drain_max + 120))
while kill -0 "$workload_pid" 2>/dev/null; do
	if ((SECONDS > deadline)); then
		c_log "workload still running at its deadline: killing it"
		kill -KILL "$workload_pid" 2>/dev/null || true
		break
	fi
	sleep 1
done
wrc=0
wait "$workload_pid" || wrc=$?
workload_pid=""
tail -n 3 "$CHAOS_DIR/workload.log" >&2 || true
chaos_refresh_nodes
for n in "${CHAOS_NODES[@]}"; do
	[[ -n $(node_pid "$n") ]] || { crashed+=("$n"); c_log "node $n died"; }
done
if has_nemesis membership; then
	c_log "membership: members at the end: $(members_in member | tr '\n' ' ')(steps: membership.log)"
fi
# Every exit of every node that ever ran, removed ones included (a node
# that crashed and was removed before a liveness check saw it): 0 is a
# clean stop, 137 our SIGKILL, 1 the fail-stop under disk faults.
ok_exits=" 0 137 "
[[ " ${nemeses[*]-} " == *" disk"* ]] && ok_exits+="1 "
while IFS= read -r line; do
	st=${line#*exited with status }
	st=${st%% *}
	if [[ $ok_exits != *" $st "* ]]; then
		f=$(basename "${line%%:*}" .log)
		c_log "$f: ${line#*==== chaos: }"
		crashed+=("$f")
	fi
done < <(grep -a -H '^==== chaos: raftmqd exited with status' "$CHAOS_DIR"/node*.log || true)
# With injected disk faults a node may fail to apply and stop itself
# (logged FATAL): expected there, a finding anywhere else.
bad="AddressSanitizer|runtime error:|Assertion .* failed"
[[ " ${nemeses[*]-} " == *" disk"* ]] || bad="$bad|FATAL"
if grep -l -E "$bad" "$CHAOS_DIR"/node*.log >/dev/null 2>&1; then
	c_log "sanitizer report, assertion or FATAL in node logs:"
	grep -n -E "$bad" "$CHAOS_DIR"/node*.log | head -n 10 >&2
	crashed+=(log)
fi

# ---- Check ---------------------------------------------------------------
crc=0
"$HERE/check" "$CHAOS_DIR/history.jsonl" --nemesis "$CHAOS_DIR/nemesis.jsonl" \
	${min_avail:+--min-availability "$min_avail"} >"$CHAOS_DIR/check.txt" 2>&1 || crc=$?
head -n -1 "$CHAOS_DIR/check.txt"
status=0
((crc == 0)) || status=1
((wrc == 0)) || { c_log "workload exited with $wrc"; status=1; }
((recovered)) || { c_log "cluster did not recover within 60 s after the faults"; status=1; }
((settle_ok)) || { c_log "a nemesis did not finish its work (membership: membership.failed)"; status=1; }
((${#crashed[@]} == 0)) || { c_log "nodes crashed: ${crashed[*]}"; status=1; }
tail -n 1 "$CHAOS_DIR/check.txt"
exit "$status"
