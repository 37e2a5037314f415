# shellcheck shell=bash disable=SC2034
# Shared helpers for the real-process cluster tests (sourced, not run).
#
# A test does:
#   source "$(dirname "$0")/lib.sh"
#   t_init leader_kill 17100 "$1"     # name, port base, build bin dir
#   t_start                           # deploy/local-cluster.sh start
#   rmq queue declare q1 ...          # the CLI against this test's cluster
#   t_pass "lost=0 dup=0"
#
# t_init re-executes the test under `timeout` (T_TIMEOUT seconds, default
# 270, below ctest's 300), gives it its own RAFTMQ_DIR under the build dir
# and its own ports, and installs a trap that stops every node it started
# by pid. On success the directory is removed; on failure it is kept (with
# the node logs) and its path printed.

T_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$T_LIB_DIR/../.." && pwd)
LC=$REPO/deploy/local-cluster.sh
RAWCLIENT=$T_LIB_DIR/rawclient.py

# Standard timeouts (seconds) for single CLI calls.
T_CMD_TIMEOUT=${T_CMD_TIMEOUT:-60}

T_DIRS=()      # RAFTMQ_DIRs of clusters to stop on exit
T_EXTRA_PIDS=() # other processes to SIGKILL on exit

t_log() { echo "[$(date -u +%T)] ${T_NAME:-test}: $*" >&2; }

t_fail() {
	t_log "FAIL: $*"
	exit 1
}

# t_init NAME PORT_BASE BIN_DIR
t_init() {
	T_NAME=$1
	local base=$2 bin=${3:-}
	[[ -n $bin ]] || {
		echo "usage: $0 BUILD_BIN_DIR" >&2
		exit 2
	}
	bin=$(cd "$bin" && pwd) || exit 2
	if [[ -z ${T_UNDER_TIMEOUT:-} ]]; then
		export T_UNDER_TIMEOUT=1
		exec timeout --kill-after=15 "${T_TIMEOUT:-270}" bash "$0" "$bin"
	fi
	[[ -x $bin/raftmqd && -x $bin/raftmq ]] ||
		t_fail "raftmqd/raftmq not built in $bin"

	export RAFTMQ_BIN=$bin
	export RAFTMQ_PORT_BASE=$base
	# Under the build dir: raft's disk I/O wants a real filesystem (O_DIRECT
	# or tmpfs), and failed runs leave their logs next to the build.
	mkdir -p "$bin/../cluster-tests"
	RAFTMQ_DIR=$(mktemp -d "$bin/../cluster-tests/$T_NAME.XXXXXX")
	RAFTMQ_DIR=$(cd "$RAFTMQ_DIR" && pwd)
	export RAFTMQ_DIR
	# Sanitizer builds start slowly on two cores.
	export RAFTMQ_START_TIMEOUT=${RAFTMQ_START_TIMEOUT:-60}
	unset RAFTMQ_EXTRA_CONFIG
	SERVERS=$(t_servers "$base")
	export RAFTMQ_SERVERS=$SERVERS
	T_DIRS+=("$RAFTMQ_DIR")
	trap t_cleanup EXIT
	trap 'exit 143' TERM
	trap 'exit 130' INT
	t_log "dir $RAFTMQ_DIR, ports $base+N"
}

t_servers() {
	local base=$1
	echo "127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
}

t_cleanup() {
	local rc=$? d pid
	trap - EXIT TERM INT
	for pid in ${T_EXTRA_PIDS[@]+"${T_EXTRA_PIDS[@]}"}; do
		kill -KILL "$pid" 2>/dev/null || true
	done
	for d in ${T_DIRS[@]+"${T_DIRS[@]}"}; do
		RAFTMQ_DIR=$d "$LC" stop >/dev/null 2>&1 || true
	done
	# A sanitizer report from any node (memory error, UB, leak at exit)
	# fails the test even if the client side looked fine.
	for d in ${T_DIRS[@]+"${T_DIRS[@]}"}; do
		if grep -l -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' \
			"$d"/*.log >/dev/null 2>&1; then
			grep -h -B2 -A30 -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' \
				"$d"/*.log | head -n 80 >&2
			t_log "sanitizer report in a node log"
			((rc != 0)) || rc=1
		fi
	done
	if ((rc == 0)); then
		for d in ${T_DIRS[@]+"${T_DIRS[@]}"}; do
			rm -rf "$d"
		done
	else
		for d in ${T_DIRS[@]+"${T_DIRS[@]}"}; do
			local log
			for log in "$d"/*.log; do
				[[ -f $log ]] || continue
				echo "---- last lines of $log" >&2
				tail -n 30 "$log" >&2
			done
			t_log "FAILED (exit $rc); logs and data kept in $d"
		done
	fi
	exit "$rc"
}

# The CLI, against this test's cluster, bounded in time.
rmq() {
	timeout --kill-after=5 "$T_CMD_TIMEOUT" \
		"$RAFTMQ_BIN/raftmq" --servers "$SERVERS" "$@"
}

t_start() { "$LC" start; }
t_kill() { "$LC" kill "$@"; }
t_restart() { "$LC" restart "$@"; }

# Client address of node $1 of the current cluster.
t_client_addr() { echo "127.0.0.1:$((RAFTMQ_PORT_BASE + $1))"; }
t_peer_addr() { echo "127.0.0.1:$((RAFTMQ_PORT_BASE + 100 + $1))"; }

# t_queue_leader QUEUE: node id leading the queue's shard ("" if none).
t_queue_leader() {
	rmq queue list --json | python3 -c '
import json, sys
for q in json.load(sys.stdin):
    if q.get("name") == sys.argv[1]:
        print(q.get("leader") or "")
        break
' "$1"
}

# t_queue_ready QUEUE: messages stored in the queue, as its leader sees them
# (0 if unknown).
t_queue_ready() {
	rmq queue list --json 2>/dev/null | python3 -c '
import json, sys
n = 0
for q in json.load(sys.stdin):
    if q.get("name") == sys.argv[1]:
        n = (q.get("ready") or 0) + (q.get("unacked") or 0)
print(n)
' "$1" 2>/dev/null || echo 0
}

# t_wait_queue_leader QUEUE [SECONDS]: poll t_queue_leader until it names a
# node (default 10 s); print it.
t_wait_queue_leader() {
	local q=$1 secs=${2:-10} i leader=""
	for ((i = 0; i < secs * 5; i++)); do
		leader=$(t_queue_leader "$q" 2>/dev/null || true)
		if [[ $leader =~ ^[0-9]+$ ]] && ((leader > 0)); then
			echo "$leader"
			return 0
		fi
		sleep 0.2
	done
	return 1
}

# t_last_line FILE: last non-empty line.
t_last_line() { grep -v '^[[:space:]]*$' "$1" | tail -n 1 || true; }

# t_expect_fail DESCRIPTION PATTERN CMD...: CMD must exit 1 and its output
# (stdout + stderr) must contain PATTERN (fixed string, case-insensitive).
t_expect_fail() {
	local what=$1 pattern=$2 out rc=0
	shift 2
	out=$("$@" 2>&1) || rc=$?
	if ((rc != 1)); then
		printf '%s\n' "$out" | tail -n 5 >&2
		t_fail "$what: expected exit 1, got $rc"
	fi
	if ! grep -qiF -- "$pattern" <<<"$out"; then
		printf '%s\n' "$out" | tail -n 5 >&2
		t_fail "$what: output lacks '$pattern'"
	fi
	t_log "ok: $what (exit 1, '$(grep -iF -m1 -- "$pattern" <<<"$out")')"
}

# t_check_bodies FILE PREFIX N: FILE must hold exactly the bodies PREFIX-1 ..
# PREFIX-N, one per line, each once (order free). Prints "lost=<n> dup=<n>".
t_check_bodies() {
	python3 - "$@" <<'PY'
import collections, sys
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [l.rstrip("\n") for l in open(path)]
bodies = [l.rstrip(".") for l in lines]  # --size pads with "."
count = collections.Counter(bodies)
want = {"%s-%d" % (prefix, i) for i in range(1, n + 1)}
lost = sorted(want - set(count), key=lambda b: int(b.rsplit("-", 1)[1]))
dup = sorted(b for b, c in count.items() if c > 1)
alien = sorted(set(count) - want)
print("lines=%d lost=%d dup=%d unexpected=%d" % (len(lines), len(lost), len(dup), len(alien)))
for name, xs in (("lost", lost), ("dup", dup), ("unexpected", alien)):
    if xs:
        print("  %s: %s%s" % (name, " ".join(xs[:10]), " ..." if len(xs) > 10 else ""))
sys.exit(0 if len(lines) == n and not lost and not dup and not alien else 1)
PY
}

# t_roundtrip: the cluster still serves: declare a fresh queue, publish one
# message, consume it back.
T_RT=0
t_roundtrip() {
	T_RT=$((T_RT + 1))
	local q="rt-$T_RT-$$" body="roundtrip-$T_RT-$RANDOM" got
	rmq queue declare "$q" >/dev/null || t_fail "roundtrip: declare $q failed"
	rmq publish "$q" --body "$body" --timeout 30 >/dev/null ||
		t_fail "roundtrip: publish to $q failed"
	got=$(rmq consume "$q" --count 1 --print --idle-timeout 10 2>/dev/null) ||
		t_fail "roundtrip: consume from $q failed"
	[[ $got == "$body" ]] || t_fail "roundtrip: got '$got', want '$body'"
	t_log "ok: cluster still serves (publish + consume on $q)"
}

# t_wait_log FILE FIXED_STRING SECONDS [MIN_COUNT]: wait until FILE holds at
# least MIN_COUNT (default 1) lines containing the string.
t_wait_log() {
	local file=$1 s=$2 secs=$3 min=${4:-1} i
	for ((i = 0; i < secs * 10; i++)); do
		if (($(grep -cF -- "$s" "$file" 2>/dev/null || true) >= min)); then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# t_workload_start DURATION SEED: the chaos workload (3 producers at 100
# msg/s, 2 consumers, 3 queues) against $SERVERS in the background, its
# history in $RAFTMQ_DIR/history.jsonl; its pid in T_WORKLOAD.
t_workload_start() {
	[[ -x $RAFTMQ_BIN/raftmq-chaos-workload ]] ||
		t_fail "raftmq-chaos-workload not built in $RAFTMQ_BIN"
	"$RAFTMQ_BIN/raftmq-chaos-workload" --servers "$SERVERS" \
		--producers 3 --consumers 2 --queues 3 --rate 100 \
		--duration "$1" --drain-idle 3 --drain-max 60 --seed "$2" \
		--history "$RAFTMQ_DIR/history.jsonl" \
		2>"$RAFTMQ_DIR/workload.log" &
	T_WORKLOAD=$!
	T_EXTRA_PIDS+=("$T_WORKLOAD")
}

# t_workload_check: wait for t_workload_start's workload to drain; fails
# unless it exited 0 and the chaos history checker passes its history
# (report in $RAFTMQ_DIR/check.txt).
t_workload_check() {
	local rc=0
	wait "$T_WORKLOAD" || rc=$?
	tail -n 3 "$RAFTMQ_DIR/workload.log" >&2 || true
	((rc == 0)) || t_fail "workload exited $rc"
	"$REPO/tests/chaos/check" "$RAFTMQ_DIR/history.jsonl" \
		>"$RAFTMQ_DIR/check.txt" 2>&1 || {
		cat "$RAFTMQ_DIR/check.txt" >&2
		t_fail "history check failed"
	}
}

t_pass() {
	t_log "PASS${1:+: $1}"
	exit 0
}
