#!/usr/bin/env bash
# A local three-node raftmq cluster on 127.0.0.1, for development and tests.
#
# Usage: deploy/local-cluster.sh start | stop | status | kill N... | restart N...
#                                | add N | remove N
#
#   start      start every node that is not running (on its existing data, or
#              bootstrapping a new cluster on empty data dirs) and return once
#              every node accepts clients and every shard has a leader; fail
#              with the tail of the logs after RAFTMQ_START_TIMEOUT seconds.
#   stop       SIGTERM every node, wait up to 10 s, then SIGKILL leftovers.
#   status     which nodes are running, then `raftmq cluster status`.
#   kill N     SIGKILL node N (1..9): a crash, nothing confirmed may be lost.
#   restart N  start node N again on its data; returns once it accepts clients.
#   add N      start node N (4..9) on an empty data dir with --join (it
#              registers as a spare), then `raftmq node add N`: returns once
#              it is a member (replicas then move onto it).
#   remove N   `raftmq node remove N --wait` (moves its replicas and
#              leaderships away, works for a dead node too), then stop it.
#              Its data dir is wiped: a removed node never comes back on its
#              old data.
#
# Environment:
#   RAFTMQ_DIR        data dirs, logs, INI and pid files (default:
#                     .local-cluster/ in the repository, ignored by git)
#   RAFTMQ_PORT_BASE  default 7100. Node N listens for clients on BASE+N, for
#                     peers on BASE+100+N, for HTTP on BASE+200+N.
#   RAFTMQ_BIN        directory holding raftmqd and raftmq (default build/bin)
#   RAFTMQ_EXTRA_CONFIG  INI text appended to every node's INI file ("\n" is
#                     a newline), e.g. RAFTMQ_EXTRA_CONFIG='[limits]\nmap_size_mb=4'
#   RAFTMQ_LOG_LEVEL  default info
#   RAFTMQ_START_TIMEOUT  seconds `start` and `restart` wait (default 30)
#
# Files: $RAFTMQ_DIR/nodeN.ini, nodeN/ (data), nodeN.log (appended),
# nodeN.pid. Every process is found and stopped through its pid file.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=pidfile.sh
source "$REPO/deploy/pidfile.sh"
NODES=(1 2 3)     # the initial cluster
ALL_NODES=(1 2 3 4 5 6 7 8 9)

abspath() {
	case $1 in
	/*) printf '%s\n' "$1" ;;
	*) printf '%s\n' "$PWD/$1" ;;
	esac
}

RAFTMQ_DIR=$(abspath "${RAFTMQ_DIR:-$REPO/.local-cluster}")
RAFTMQ_PORT_BASE=${RAFTMQ_PORT_BASE:-7100}
if [[ -n ${RAFTMQ_BIN:-} ]]; then
	RAFTMQ_BIN=$(abspath "$RAFTMQ_BIN")
else
	RAFTMQ_BIN=$REPO/build/bin
fi
START_TIMEOUT=${RAFTMQ_START_TIMEOUT:-30}
LOG_LEVEL=${RAFTMQ_LOG_LEVEL:-info}
HOST=127.0.0.1

if ! [[ $RAFTMQ_PORT_BASE =~ ^[0-9]+$ ]] ||
	((RAFTMQ_PORT_BASE < 1 || RAFTMQ_PORT_BASE + 203 > 65535)); then
	echo "local-cluster: bad RAFTMQ_PORT_BASE: $RAFTMQ_PORT_BASE" >&2
	exit 2
fi

client_addr() { echo "$HOST:$((RAFTMQ_PORT_BASE + $1))"; }
peer_addr() { echo "$HOST:$((RAFTMQ_PORT_BASE + 100 + $1))"; }
http_addr() { echo "$HOST:$((RAFTMQ_PORT_BASE + 200 + $1))"; }

# Client addresses of the initial nodes and of every added node that has a
# data dir.
servers() {
	local n s=""
	for n in "${ALL_NODES[@]}"; do
		if ((n <= 3)) || [[ -d $RAFTMQ_DIR/node$n ]]; then
			s+="${s:+,}$(client_addr "$n")"
		fi
	done
	echo "$s"
}

initial_cluster() {
	local n s=""
	for n in "${NODES[@]}"; do
		s+="${s:+,}$n@$(peer_addr "$n")"
	done
	echo "$s"
}

# Print the header comment of this file; exit $1 (default 2, to stderr).
usage() {
	local rc=${1:-2}
	if ((rc == 0)); then
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
	else
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	fi
	exit "$rc"
}

say() { echo "local-cluster: $*"; }
die() {
	echo "local-cluster: $*" >&2
	exit 1
}

check_node_arg() {
	[[ $1 =~ ^[1-9]$ ]] || {
		echo "local-cluster: node must be 1..9, not '$1'" >&2
		exit 2
	}
}

# Print the pid of node $1 if it is running (its pid file names a live
# raftmqd), else nothing. A stale pid file is removed.
node_pid() {
	local f=$RAFTMQ_DIR/node$1.pid pid
	pid=$(raftmqd_pid "$f")
	if [[ -n $pid ]]; then
		echo "$pid"
	else
		rm -f "$f"
	fi
}

write_ini() {
	local n=$1
	{
		echo "; Written by deploy/local-cluster.sh, rewritten on every start."
		echo "[node]"
		echo "id = $n"
		echo "data_dir = $RAFTMQ_DIR/node$n"
		echo "client_address = $(client_addr "$n")"
		echo "peer_address = $(peer_addr "$n")"
		echo "http_address = $(http_addr "$n")"
		echo "bind_address = $HOST"
		echo "log_level = $LOG_LEVEL"
		echo
		echo "[cluster]"
		echo "name = local"
		if ((n <= 3)); then
			echo "initial_cluster = $(initial_cluster)"
		else
			# Added later: registers through the running nodes on
			# its first start (ignored once it has joined).
			echo "join = $(servers)"
		fi
		if [[ -n ${RAFTMQ_EXTRA_CONFIG:-} ]]; then
			echo
			printf '%b\n' "$RAFTMQ_EXTRA_CONFIG"
		fi
	} >"$RAFTMQ_DIR/node$n.ini"
}

check_bins() {
	[[ -x $RAFTMQ_BIN/raftmqd ]] ||
		die "no raftmqd in $RAFTMQ_BIN (build first, or set RAFTMQ_BIN)"
	[[ -x $RAFTMQ_BIN/raftmq ]] ||
		die "no raftmq in $RAFTMQ_BIN (build first, or set RAFTMQ_BIN)"
}

# Start node $1 unless it is running. The process gets its own session
# (setsid) and ignores SIGHUP (nohup), so it outlives this script; since a
# background job of a non-interactive shell is not a process group leader,
# setsid and nohup exec in place and $! is raftmqd's own pid.
start_node() {
	local n=$1 pid
	if [[ -e $RAFTMQ_DIR/node$n.removed ]]; then
		say "node $n was removed from the cluster: not starting it"
		return 0
	fi
	pid=$(node_pid "$n")
	if [[ -n $pid ]]; then
		say "node $n already running (pid $pid)"
		return 0
	fi
	mkdir -p "$RAFTMQ_DIR/node$n"
	write_ini "$n"
	echo "==== local-cluster.sh: starting node $n at $(date -u +%FT%TZ) ====" \
		>>"$RAFTMQ_DIR/node$n.log"
	setsid nohup "$RAFTMQ_BIN/raftmqd" --config "$RAFTMQ_DIR/node$n.ini" \
		</dev/null >>"$RAFTMQ_DIR/node$n.log" 2>&1 &
	pid=$!
	echo "$pid" >"$RAFTMQ_DIR/node$n.pid"
	say "node $n started (pid $pid): clients $(client_addr "$n"), peers $(peer_addr "$n"), http $(http_addr "$n")"
}

tail_logs() {
	local n
	for n in "$@"; do
		[[ -f $RAFTMQ_DIR/node$n.log ]] || continue
		echo "---- tail of $RAFTMQ_DIR/node$n.log" >&2
		tail -n 20 "$RAFTMQ_DIR/node$n.log" >&2
	done
}

status_json() {
	"$RAFTMQ_BIN/raftmq" --servers "$(servers)" cluster status --json 2>&1
}

# Exit 0 if the JSON on stdin shows every node reachable and a leader for
# every shard; otherwise print what is missing.
cluster_ready() {
	python3 -c '
import json, sys
text = sys.stdin.read()
try:
    d = json.loads(text)
except ValueError:
    last = (text.strip().splitlines() or ["(no output)"])[-1]
    print("no JSON status yet, raftmq said: %s" % last[:200]); sys.exit(1)
nodes, shards = d.get("nodes") or [], d.get("shards") or []
down = [n.get("id") for n in nodes if not n.get("reachable")]
leaderless = [s.get("id") for s in shards if not s.get("leader")]
if len(nodes) < int(sys.argv[1]) or down or not shards or leaderless:
    print("nodes=%d unreachable=%s shards=%d without leader=%s"
          % (len(nodes), down, len(shards), leaderless))
    sys.exit(1)
' "${#NODES[@]}"
}

# Does node $1 accept connections on its client port?
port_open() {
	local addr
	addr=$(client_addr "$1")
	(exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null
}

# Fail early if a node we started has died.
check_alive() {
	local n f pid
	for n in "$@"; do
		f=$RAFTMQ_DIR/node$n.pid
		pid=$(cat "$f" 2>/dev/null || true)
		[[ -n $(raftmqd_pid "$f") ]] && continue
		# Look once more before calling it dead, and say what was seen:
		# a loaded machine has shown this check fail for a live node.
		sleep 1
		[[ -n $(raftmqd_pid "$f") ]] && continue
		rm -f "$f"
		tail_logs "$n"
		die "node $n exited during start-up (pid file: '${pid}', log: $RAFTMQ_DIR/node$n.log)"
	done
}

cmd_start() {
	check_bins
	mkdir -p "$RAFTMQ_DIR"
	local n out why="" deadline=$((SECONDS + START_TIMEOUT))
	for n in "${NODES[@]}"; do
		start_node "$n"
	done
	while ((SECONDS < deadline)); do
		check_alive $(for n in "${NODES[@]}"; do
			[[ -e $RAFTMQ_DIR/node$n.removed ]] || echo "$n"
		done)
		if out=$(status_json); then
			if why=$(cluster_ready <<<"$out"); then
				say "cluster ready: 3 nodes reachable, every shard has a leader (servers $(servers))"
				return 0
			fi
		else
			why=$(tail -n 1 <<<"$out")
		fi
		sleep 0.3
	done
	tail_logs "${NODES[@]}"
	die "cluster not ready after ${START_TIMEOUT}s: $why (nodes left running; stop them with: $0 stop)"
}

cmd_restart() {
	check_bins
	mkdir -p "$RAFTMQ_DIR"
	local n out="" deadline=$((SECONDS + START_TIMEOUT)) pending
	for n in "$@"; do
		start_node "$n"
	done
	pending=("$@")
	while ((${#pending[@]} > 0)); do
		check_alive "${pending[@]}"
		local left=()
		for n in "${pending[@]}"; do
			if port_open "$n" &&
				out=$("$RAFTMQ_BIN/raftmq" --servers "$(client_addr "$n")" \
					cluster status --json 2>&1); then
				say "node $n accepts clients on $(client_addr "$n")"
			else
				left+=("$n")
			fi
		done
		pending=(${left[@]+"${left[@]}"})
		((${#pending[@]} == 0)) && break
		if ((SECONDS >= deadline)); then
			tail_logs "${pending[@]}"
			die "node(s) ${pending[*]} not accepting clients after ${START_TIMEOUT}s: $(tail -n 1 <<<"$out")"
		fi
		sleep 0.3
	done
}

wait_gone() {
	local pid=$1 tenths=$2 i
	for ((i = 0; i < tenths; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	! kill -0 "$pid" 2>/dev/null
}

cmd_kill() {
	local n pid
	for n in "$@"; do
		pid=$(node_pid "$n")
		if [[ -z $pid ]]; then
			say "node $n is not running"
			continue
		fi
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 50 || die "node $n (pid $pid) survived SIGKILL"
		rm -f "$RAFTMQ_DIR/node$n.pid"
		say "node $n killed (SIGKILL, pid $pid)"
	done
}

cmd_stop() {
	local n pid pids=() nodes=() i
	local which=("$@")
	((${#which[@]} > 0)) || which=("${ALL_NODES[@]}")
	for n in "${which[@]}"; do
		pid=$(node_pid "$n")
		[[ -n $pid ]] || continue
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
		nodes+=("$n")
	done
	if ((${#pids[@]} == 0)); then
		say "no node running"
		return 0
	fi
	say "sent SIGTERM to node(s) ${nodes[*]}"
	for ((i = 0; i < 100; i++)); do
		local alive=0
		for pid in "${pids[@]}"; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done
		((alive)) || break
		sleep 0.1
	done
	local rc=0
	for i in "${!pids[@]}"; do
		pid=${pids[$i]}
		n=${nodes[$i]}
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" 50 || true
			say "node $n (pid $pid) did not stop within 10 s: sent SIGKILL"
			rc=1
		else
			say "node $n stopped"
		fi
		rm -f "$RAFTMQ_DIR/node$n.pid"
	done
	return "$rc"
}

cmd_status() {
	local n pid running=0
	for n in "${ALL_NODES[@]}"; do
		((n <= 3)) || [[ -d $RAFTMQ_DIR/node$n ]] || continue
		pid=$(node_pid "$n")
		if [[ -n $pid ]]; then
			say "node $n running (pid $pid), clients $(client_addr "$n")"
			running=$((running + 1))
		else
			say "node $n not running"
		fi
	done
	((running > 0)) || return 3
	check_bins
	"$RAFTMQ_BIN/raftmq" --servers "$(servers)" cluster status
}

cmd_add() {
	local n=$1 pid deadline=$((SECONDS + START_TIMEOUT))
	check_bins
	((n >= 4)) || die "add: nodes 1..3 are the initial cluster; add 4..9"
	pid=$(node_pid "$n")
	[[ -z $pid ]] || die "add: node $n is already running (pid $pid)"
	[[ ! -e $RAFTMQ_DIR/node$n ]] ||
		die "add: $RAFTMQ_DIR/node$n exists: a node joins on an empty data dir"
	mkdir -p "$RAFTMQ_DIR"
	start_node "$n"
	until port_open "$n"; do
		check_alive "$n"
		if ((SECONDS >= deadline)); then
			tail_logs "$n"
			die "node $n did not join within ${START_TIMEOUT}s"
		fi
		sleep 0.3
	done
	say "node $n registered as a spare; adding it (raftmq node add $n)"
	"$RAFTMQ_BIN/raftmq" --servers "$(servers)" node add "$n"
}

cmd_remove() {
	local n=$1
	check_bins
	"$RAFTMQ_BIN/raftmq" --servers "$(servers)" node remove "$n" --wait
	cmd_stop "$n"
	# A removed node must never start again on its old Raft data.
	rm -rf "${RAFTMQ_DIR:?}/node$n"
	((n > 3)) || touch "$RAFTMQ_DIR/node$n.removed"
	say "node $n removed and stopped; its data dir is wiped"
}

(($# >= 1)) || usage
cmd=$1
shift
case $cmd in
start | stop | status)
	(($# == 0)) || usage
	"cmd_$cmd"
	;;
kill | restart)
	(($# >= 1)) || usage
	for n in "$@"; do
		check_node_arg "$n"
	done
	"cmd_$cmd" "$@"
	;;
add | remove)
	(($# == 1)) || usage
	check_node_arg "$1"
	"cmd_$cmd" "$1"
	;;
-h | --help | help)
	usage 0
	;;
*)
	echo "local-cluster: unknown command '$cmd'" >&2
	usage
	;;
esac
