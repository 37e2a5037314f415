# shellcheck shell=bash
# Shared helpers of the chaos suite (sourced by run.sh and the nemeses).
#
# A chaos cluster starts with three nodes, 1..3 (initial_cluster); the
# membership nemesis adds nodes 4, 5, ... (with `join`, never reusing an
# id) and removes old ones. Node N lives entirely on 127.0.0.N:
#   client  127.0.0.N:BASE+1     peer (listener)  127.0.0.N:BASE+2
#   http    127.0.0.N:BASE+3     peer via proxy   127.0.0.N:BASE+4 (delay)
# and its outgoing peer connections come from 127.0.0.N (bind_address), so
# nftables rules on addresses cut exactly the links between two nodes.
#
# The member set is $CHAOS_DIR/members, one "ID STATE" line per node that
# ever ran: joining (started with join, being added), member, leaving
# (being removed: still running), removed (stopped and wiped: must never
# start again). Without the file the members are 1..3. Change it, and
# start a node whose state may change, only under members_locked.
# CHAOS_NODES: the nodes that should be running (all but removed), in id
# order; re-read by chaos_refresh_nodes (each nemesis reads it on start).
#
# Environment (set by run.sh, inherited by the nemeses):
#   CHAOS_DIR        the run's results dir: nodeN/ (data), nodeN.log,
#                    nodeN.ini, nodeN.pid, nemesis.jsonl, history.jsonl
#   CHAOS_BIN        directory with raftmqd and raftmq
#   CHAOS_PORT_BASE  default 19100
#   CHAOS_PROXY      1: initial_cluster names the proxy ports (delay nemesis)
#   CHAOS_EXTRA_CONFIG  INI text appended to every node's INI ("\n" = newline)
# A file $CHAOS_DIR/nodeN.fiu holds a libfiu spec: node N then starts
# under `fiu-run -x -c SPEC` (disk nemesis).

CHAOS_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../deploy/pidfile.sh
source "$CHAOS_LIB_DIR/../../deploy/pidfile.sh"
CHAOS_PORT_BASE=${CHAOS_PORT_BASE:-19100}
CHAOS_PROXY=${CHAOS_PROXY:-0}
CHAOS_INITIAL_NODES=(1 2 3)
CHAOS_NODES=(1 2 3)
# One table per port base, so runs on other ports can go on side by side.
CHAOS_NFT_TABLE=${CHAOS_NFT_TABLE:-"inet raftmq_chaos_$CHAOS_PORT_BASE"}

c_log() { echo "[$(date -u +%T)] chaos: $*" >&2; }

node_ip() { echo "127.0.0.$1"; }
client_addr() { echo "127.0.0.$1:$((CHAOS_PORT_BASE + 1))"; }
peer_addr() { echo "127.0.0.$1:$((CHAOS_PORT_BASE + 2))"; }
http_addr() { echo "127.0.0.$1:$((CHAOS_PORT_BASE + 3))"; }
proxy_addr() { echo "127.0.0.$1:$((CHAOS_PORT_BASE + 4))"; }

# The address other nodes use to reach node $1's peer port.
advertised_peer_addr() {
	if [[ $CHAOS_PROXY == 1 ]]; then proxy_addr "$1"; else peer_addr "$1"; fi
}

# Print "ID STATE" for every node in the member set, in id order.
members_list() {
	if [[ -n ${CHAOS_DIR:-} && -f $CHAOS_DIR/members ]]; then
		sort -n -k1,1 "$CHAOS_DIR/members"
	else
		printf '%s member\n' "${CHAOS_INITIAL_NODES[@]}"
	fi
}

# node_state N: joining, member, leaving or removed; nothing if N never ran.
node_state() {
	members_list | awk -v n="$1" '$1 == n { print $2 }'
}

# Ids of the nodes in the states named in $1 (an ERE), in id order.
members_in() {
	members_list | awk -v re="^($1)\$" '$2 ~ re { print $1 }'
}

# set_node_state N STATE (under members_locked).
set_node_state() {
	local f=$CHAOS_DIR/members
	[[ -f $f ]] || members_list >"$f"
	awk -v n="$1" -v s="$2" '
		$1 == n { $2 = s; done = 1 }
		{ print }
		END { if (!done) print n, s }' "$f" >"$f.tmp"
	mv "$f.tmp" "$f"
}

# Re-read CHAOS_NODES (the nodes that should be running) from the file.
chaos_refresh_nodes() {
	local ids
	ids=$(members_in 'joining|member|leaving')
	# shellcheck disable=SC2206 # ids are numbers
	CHAOS_NODES=($ids)
}

# members_locked CMD ARGS...: run CMD with the member set locked (an flock
# on $CHAOS_DIR/members.lock held by fd 9, which start_node closes in the
# node it starts: a node must not hold the lock). Not re-entrant.
members_locked() {
	local rc=0
	exec 9>>"$CHAOS_DIR/members.lock"
	flock -w 60 9 || c_log "members lock not had in 60 s: going on without"
	"$@" || rc=$?
	exec 9>&-
	return "$rc"
}

# Client addresses of the members (voters and leaving nodes; not a node
# still joining), for the CLI and the joining nodes.
chaos_servers() {
	local n s=""
	for n in $(members_in 'member|leaving'); do
		s+="${s:+,}$(client_addr "$n")"
	done
	echo "$s"
}

is_initial_node() { [[ " ${CHAOS_INITIAL_NODES[*]} " == *" $1 "* ]]; }

chaos_initial_cluster() {
	local n s=""
	for n in "${CHAOS_INITIAL_NODES[@]}"; do
		s+="${s:+,}$n@$(advertised_peer_addr "$n")"
	done
	echo "$s"
}

# Record a nemesis event: nemesis_event NAME ACTION [JSON-FIELDS]
nemesis_event() {
	local name=$1 action=$2 extra=${3:-}
	printf '{"t": %s, "op": "nemesis", "nemesis": "%s", "action": "%s"%s}\n' \
		"$(date +%s.%N | cut -c1-14)" "$name" "$action" \
		"${extra:+, $extra}" >>"$CHAOS_DIR/nemesis.jsonl"
	c_log "nemesis $name $action ${extra}"
}

# pid of node $1 if running, else nothing.
node_pid() { raftmqd_pid "$CHAOS_DIR/node$1.pid"; }

write_ini() {
	local n=$1
	{
		echo "[node]"
		echo "id = $n"
		echo "data_dir = $CHAOS_DIR/node$n"
		echo "client_address = $(client_addr "$n")"
		echo "peer_address = $(peer_addr "$n")"
		echo "http_address = $(http_addr "$n")"
		echo "bind_address = $(node_ip "$n")"
		echo "log_level = ${CHAOS_LOG_LEVEL:-info}"
		echo "[cluster]"
		echo "name = chaos"
		if is_initial_node "$n"; then
			echo "initial_cluster = $(chaos_initial_cluster)"
		else
			# Added by the membership nemesis: registers through the
			# members on its first start (ignored once it has joined).
			echo "join = $(chaos_servers)"
		fi
		if [[ -n ${CHAOS_EXTRA_CONFIG:-} ]]; then
			printf '%b\n' "$CHAOS_EXTRA_CONFIG"
		fi
	} >"$CHAOS_DIR/node$n.ini"
}

# Start node $1 (no-op if running; refused, status 1, if it was removed
# from the cluster). With a file nodeN.fiu (or CHAOS_FIU=1: every node) it
# runs under `fiu-run -x` (libfiu's POSIX preload, remote control by
# fiu-ctrl), plus `-c SPEC` if the file holds a spec. A wrapper shell
# waits for raftmqd and appends its exit status to the log (a node that
# dies on its own leaves "exited with status N": 134 abort, 139 segfault,
# 137 SIGKILL, and the pid: cores are on, see kernel.core_pattern).
start_node() {
	local n=$1
	# Not on the line above: `local` expands all its words first, so $n
	# there would be the caller's n.
	local pid wrap=() log=$CHAOS_DIR/node$n.log pidf=$CHAOS_DIR/node$n.pid i
	if [[ $(node_state "$n") == removed ]]; then
		c_log "node $n was removed from the cluster: not starting it"
		return 1
	fi
	pid=$(node_pid "$n")
	[[ -z $pid ]] || return 0
	mkdir -p "$CHAOS_DIR/node$n"
	write_ini "$n"
	[[ ${CHAOS_FIU:-0} == 1 && ! -e $CHAOS_DIR/node$n.fiu ]] && : >"$CHAOS_DIR/node$n.fiu"
	if [[ -f $CHAOS_DIR/node$n.fiu ]]; then
		wrap=(fiu-run -x)
		[[ -s $CHAOS_DIR/node$n.fiu ]] && wrap+=(-c "$(<"$CHAOS_DIR/node$n.fiu")")
	fi
	echo "==== chaos: starting node $n at $(date -u +%FT%T.%3NZ) ${wrap[*]} ====" >>"$log"
	rm -f "$pidf"
	setsid bash -c '
		log=$1 pidf=$2
		shift 2
		ulimit -c unlimited 2>/dev/null || true
		"$@" </dev/null >>"$log" 2>&1 &
		pid=$!
		echo $pid >"$pidf.tmp" && mv "$pidf.tmp" "$pidf"
		wait $pid
		echo "==== chaos: raftmqd exited with status $? at $(date -u +%FT%T.%3NZ) (pid $pid) ====" >>"$log"
	' chaos-node "$log" "$pidf" ${wrap[@]+"${wrap[@]}"} "$CHAOS_BIN/raftmqd" \
		--config "$CHAOS_DIR/node$n.ini" </dev/null >/dev/null 2>&1 9>&- &
	disown $! 2>/dev/null || true # no "Killed" notes from bash
	# A loaded machine can take seconds to get there: wait up to 10 s.
	for ((i = 0; i < 500; i++)); do
		[[ -f $pidf ]] && break
		sleep 0.02
	done
}

# node_pid, waiting up to $2 seconds for a node being started to show up.
node_pid_wait() {
	local n=$1 i pid
	for ((i = 0; i < ${2:-5} * 10; i++)); do
		pid=$(node_pid "$n")
		[[ -n $pid ]] && { echo "$pid"; return 0; }
		sleep 0.1
	done
}

# SIGKILL node $1 and wait until it is gone.
kill_node() {
	local n=$1 pid i
	pid=$(node_pid "$n")
	[[ -n $pid ]] || return 0
	kill -CONT "$pid" 2>/dev/null || true
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	rm -f "$CHAOS_DIR/node$n.pid" "/tmp/fiu-ctrl-$pid.in" "/tmp/fiu-ctrl-$pid.out"
	echo "==== chaos: node $n killed at $(date -u +%FT%T.%3NZ) ====" \
		>>"$CHAOS_DIR/node$n.log"
}

# stop_nodes N...: SIGTERM those nodes, SIGKILL after 10 s; by pid.
stop_nodes() {
	local n pid pids=() i
	for n in "$@"; do
		pid=$(node_pid "$n")
		[[ -n $pid ]] || continue
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	done
	for ((i = 0; i < 100; i++)); do
		local alive=0
		for pid in ${pids[@]+"${pids[@]}"}; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done
		((alive)) || break
		sleep 0.1
	done
	for pid in ${pids[@]+"${pids[@]}"}; do
		kill -KILL "$pid" 2>/dev/null || true
		rm -f "/tmp/fiu-ctrl-$pid.in" "/tmp/fiu-ctrl-$pid.out"
	done
	for n in "$@"; do rm -f "$CHAOS_DIR/node$n.pid"; done
}

# Every node that ever ran in this run dir: the member set (removed nodes
# included) and every pid file.
chaos_all_nodes() {
	local f
	{
		members_list | awk '{ print $1 }'
		for f in "$CHAOS_DIR"/node*.pid; do
			[[ -e $f ]] || continue
			f=${f##*/node}
			echo "${f%.pid}"
		done
	} | sort -n -u
}

# Stop every node that ever ran (see stop_nodes).
stop_all() {
	# shellcheck disable=SC2046 # ids are numbers
	stop_nodes $(chaos_all_nodes)
}

rmq() { timeout 20 "$CHAOS_BIN/raftmq" --servers "$(chaos_servers)" "$@"; }

# Print "ok" if the cluster lists exactly the member set (members and
# leaving nodes of $CHAOS_DIR/members), every one reachable, and every
# shard has a leader; else what is missing.
cluster_ready() {
	local out
	out=$(rmq cluster status --json 2>&1) || {
		echo "status failed: $(tail -n1 <<<"$out")"
		return 1
	}
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
want = sorted(int(x) for x in sys.argv[1].split())
nodes, shards = d.get("nodes") or [], d.get("shards") or []
ids = sorted(n.get("id") for n in nodes)
down = [n.get("id") for n in nodes if not n.get("reachable")]
nolead = [s.get("id") for s in shards if not s.get("leader")]
if len(nodes) < 3 or ids != want or down or not shards or nolead:
    print("nodes=%s (members %s) down=%s shards=%d leaderless=%s" % (ids, want, down, len(shards), nolead))
    sys.exit(1)
print("ok")' "$(members_in 'member|leaving')" <<<"$out"
}

# wait_ready SECONDS: until cluster_ready, or fail.
wait_ready() {
	local deadline=$((SECONDS + $1)) why=""
	while ((SECONDS < deadline)); do
		why=$(cluster_ready 2>&1) && return 0
		sleep 0.5
	done
	c_log "cluster not ready after $1 s: $why"
	return 1
}

# Leader node id of the shard holding the most queues' traffic: the shard
# of queue chaos-q0 (busy), or a random node if unknown. Prints an id.
busy_leader() {
	local out
	out=$(rmq queue list --json 2>/dev/null) || return 1
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
qs = d if isinstance(d, list) else d.get("queues", [])
for q in qs:
    if q.get("name", "").startswith("chaos-q") and q.get("leader"):
        print(q["leader"]); sys.exit(0)
sys.exit(1)' <<<"$out"
}

# Leader node id of shard $1 (0: meta).
shard_leader() {
	local out
	out=$(rmq cluster status --json 2>/dev/null) || return 1
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
for s in d.get("shards", []):
    if s.get("id") == int(sys.argv[1]) and s.get("leader"):
        print(s["leader"]); sys.exit(0)
sys.exit(1)' "$1" <<<"$out"
}

nft_ensure_table() {
	nft list table $CHAOS_NFT_TABLE >/dev/null 2>&1 && return 0
	nft -f - <<NFT
table $CHAOS_NFT_TABLE {
	chain output {
		type filter hook output priority 0; policy accept;
	}
}
NFT
}

nft_remove_table() {
	nft delete table $CHAOS_NFT_TABLE 2>/dev/null || true
}

# Drop packets from node $1 to node $2 on the peer ports (one direction:
# both the segments of $1's connections to $2 and the answers $1 sends on
# $2's connections). Client traffic (client ports) is never touched.
# An optional third argument P drops only P% of them (numgen random).
nft_drop() {
	local a=$1 b=$2 p=${3:-} ports match
	ports="{ $((CHAOS_PORT_BASE + 2)), $((CHAOS_PORT_BASE + 4)) }"
	match="ip saddr $(node_ip "$a") ip daddr $(node_ip "$b")"
	nft_ensure_table
	for dir in dport sport; do
		if [[ -n $p ]]; then
			nft add rule $CHAOS_NFT_TABLE output $match tcp $dir "$ports" \
				numgen random mod 100 \< "$p" counter drop
		else
			nft add rule $CHAOS_NFT_TABLE output $match tcp $dir "$ports" \
				counter drop
		fi
	done
}

nft_flush() {
	nft flush chain $CHAOS_NFT_TABLE output 2>/dev/null || true
}
