#!/usr/bin/env bash
# membership: the node replacements an operator does (docs/operations.md,
# "Membership"), while the workload runs and other nemeses strike. The
# member count stays at 3 or 4: add first, then remove. Each window does
# one step, in the background, so that the next window (a kill, say) may
# hit the cluster in the middle of the change:
#   with 3 members: start node N (the next id never used, 4 up to
#     CHAOS_MEMBERSHIP_MAX_ID, default 60: a node keeps a table of every
#     node the cluster ever had, NODE_MAX_PEERS = 64 entries; on
#     127.0.0.N, `join` naming the members) on an empty data dir, wait
#     until it registered (a spare), `raftmq node add N` (returns once N
#     is a voter of every shard);
#   with 4 members: `raftmq node remove X --wait` of an old member X (not
#     the newest), then stop X by pid and wipe its data dir (its log and
#     INI stay). X may be dead (killed): removal works without it.
# A step interrupted by an error is retried until CHAOS_MEMBERSHIP_STEP_MAX
# (default 240) seconds; a step that did not finish by then is a finding
# (membership.failed, and settle fails). The member set is kept in
# $CHAOS_DIR/members (lib.sh): joining -> member, member -> leaving ->
# removed; a removed node is never started again (kill's heal, the
# runner's liveness checks and restart-all all read the set).
#
#   start [TARGET]  decide the step and start it in the background (after
#                   waiting for the previous step); TARGET picks the node to
#                   remove: oldest (lowest id), leader (of the shard of
#                   chaos-q0), meta (meta leader), random
#   heal            end of the window; the step may still be running
#   settle          wait for the step; exit 1 if any step failed
#   abort           kill a running step (its process group)
#   step add|remove N   the background step itself
#
# Events (nemesis.jsonl): start {"step", "node"} when a step begins, done
# {"step", "node", "ok", "secs"} when it ends (the checker counts "done"
# like a heal for the end of the fault phase), heal at the window's end,
# skip {"why"} when a window does nothing. Steps log to membership.log.
source "$(dirname "$0")/common.sh"
MEM_MAX_ID=${CHAOS_MEMBERSHIP_MAX_ID:-60}
MEM_STEP_MAX=${CHAOS_MEMBERSHIP_STEP_MAX:-240}
MEM_PID=$CHAOS_DIR/membership.pid
MEM_LOG=$CHAOS_DIR/membership.log
MEM_FAILED=$CHAOS_DIR/membership.failed
MEM_WHY=""

# cli SECS ARGS...: the raftmq CLI against the current members.
cli() {
	local secs=$1
	shift
	timeout "$secs" "$CHAOS_BIN/raftmq" --servers "$(chaos_servers)" "$@"
}

# node_role N: N's role in `raftmq node list` (voter, standby, spare,
# leaving) or "absent"; status 1 if the list could not be had.
node_role() {
	local out
	out=$(cli 20 node list --json 2>/dev/null) || return 1
	python3 -c '
import json, sys
for m in json.loads(sys.stdin.read()):
    if m.get("id") == int(sys.argv[1]):
        print(m.get("role") or "unknown"); sys.exit(0)
print("absent")' "$1" <<<"$out"
}

# pid of the running step, else nothing.
step_pid() {
	local pid
	[[ -f $MEM_PID ]] || return 0
	pid=$(<"$MEM_PID")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	grep -qa membership.sh "/proc/$pid/cmdline" 2>/dev/null || return 0
	echo "$pid"
}

# wait_step SECS: until no step runs (status 0), or 1 after SECS.
wait_step() {
	local deadline=$((SECONDS + $1))
	while [[ -n $(step_pid) ]]; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# The next id: above every id that ever ran, at least 4.
next_id() {
	local top
	top=$(members_list | awk '{ print $1 }' | sort -n | tail -n 1)
	echo $((top < 3 ? 4 : top + 1))
}

# The member to remove for TARGET: never the newest member (just added).
removal_target() {
	local t=$1 cands=() id=""
	# shellcheck disable=SC2207 # ids are numbers
	cands=($(members_in member | sort -n | head -n -1))
	((${#cands[@]} > 0)) || return 1
	case $t in
	oldest) id=${cands[0]} ;;
	leader) id=$(busy_leader 2>/dev/null || true) ;;
	meta) id=$(shard_leader 0 2>/dev/null || true) ;;
	esac
	if [[ -z $id || " ${cands[*]} " != *" $id "* ]]; then
		id=${cands[$((${NEM_RANDOM:-$RANDOM} % ${#cands[@]}))]}
	fi
	echo "$id"
}

nem_start() {
	local target=${1:-oldest} step n count
	if ! wait_step $((MEM_STEP_MAX + 30)); then
		nemesis_event membership skip '"why": "the previous step is still running"'
		return 0
	fi
	# A step that failed is taken up again first.
	step=add
	n=$(members_in joining)
	if [[ -z $n ]]; then
		step=remove
		n=$(members_in leaving)
	fi
	n=${n%%$'\n'*} # the first one
	if [[ -z $n ]]; then
		count=$(members_in member | wc -l)
		if ((count <= 3)); then
			step=add
			n=$(next_id)
			if ((n > MEM_MAX_ID)); then
				nemesis_event membership skip "\"why\": \"no node id left (max $MEM_MAX_ID)\""
				return 0
			fi
		else
			step=remove
			n=$(removal_target "$target") || {
				nemesis_event membership skip '"why": "no member to remove"'
				return 0
			}
		fi
	fi
	touch "$NEM_STATE"
	nemesis_event membership start "\"step\": \"$step\", \"node\": $n"
	# Its own process group (setsid), so that abort can end it whole.
	setsid bash "$0" step "$step" "$n" </dev/null >>"$MEM_LOG" 2>&1 &
	echo $! >"$MEM_PID"
	disown $! 2>/dev/null || true
}

nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	rm -f "$NEM_STATE"
	nemesis_event membership heal "\"step_running\": $([[ -n $(step_pid) ]] && echo true || echo false)"
}

nem_settle() {
	local pid
	if ! wait_step $((MEM_STEP_MAX + 60)); then
		pid=$(step_pid)
		c_log "membership: a step (pid $pid) still runs after $((MEM_STEP_MAX + 60)) s"
		echo "a step still running at the end (pid $pid)" >>"$MEM_FAILED"
	fi
	if [[ -s $MEM_FAILED ]]; then
		c_log "membership: failed steps: $(tr '\n' ';' <"$MEM_FAILED")"
		return 1
	fi
	return 0
}

nem_abort() {
	local pid
	pid=$(step_pid)
	[[ -n $pid ]] || return 0
	kill -TERM -- "-$pid" 2>/dev/null || true
	sleep 0.5
	kill -KILL -- "-$pid" 2>/dev/null || true
	rm -f "$MEM_PID"
}

# ---- The step (background) ------------------------------------------------

join_locked() {
	set_node_state "$1" joining
	start_node "$1"
}

mem_add() {
	local n=$1 deadline=$((SECONDS + MEM_STEP_MAX)) role="" asked=0
	members_locked join_locked "$n"
	while ((SECONDS < deadline)); do
		role=$(node_role "$n") || role="(node list failed)"
		case $role in
		voter)
			members_locked set_node_state "$n" member
			c_log "membership: node $n is a voter of every shard ($asked node add)"
			return 0
			;;
		spare)
			# Registered: make it a member. Returns once it is a
			# voter everywhere; on an error (a leader lost, a
			# timeout) the loop looks again.
			asked=$((asked + 1))
			cli 200 node add "$n" --timeout 120 ||
				c_log "membership: node add $n failed (attempt $asked)"
			;;
		leaving)
			MEM_WHY="node $n is leaving while being added"
			return 1
			;;
		*) sleep 1 ;; # absent (not registered yet), standby, no answer
		esac
	done
	MEM_WHY="node $n not a voter after ${MEM_STEP_MAX} s (role: $role)"
	return 1
}

remove_done_locked() {
	set_node_state "$1" removed
	echo "==== chaos: node $1 removed from the cluster at $(date -u +%FT%T.%3NZ): stopping it, wiping its data ====" \
		>>"$CHAOS_DIR/node$1.log"
}

mem_remove() {
	local n=$1 deadline=$((SECONDS + MEM_STEP_MAX)) role="" asked=0 gone=0
	members_locked set_node_state "$n" leaving
	while ((SECONDS < deadline)); do
		role=$(node_role "$n") || role="(node list failed)"
		if [[ $role == absent ]]; then
			gone=1
			break
		fi
		if [[ $role != "(node list failed)" ]]; then
			# Returns once n is out of every shard's configuration
			# (absent from node list).
			asked=$((asked + 1))
			if cli 200 node remove "$n" --wait --timeout 120; then
				gone=1
				break
			fi
			c_log "membership: node remove $n failed (attempt $asked)"
		fi
		sleep 1
	done
	if ((!gone)); then
		MEM_WHY="node $n still listed after ${MEM_STEP_MAX} s (role: $role)"
		return 1
	fi
	# From here on nobody starts it again; then stop it and wipe it, as
	# the operator is told to.
	members_locked remove_done_locked "$n"
	stop_nodes "$n"
	rm -rf "${CHAOS_DIR:?}/node$n"
	c_log "membership: node $n removed ($asked node remove), stopped, data wiped"
}

nem_verb_step() {
	local step=$1 n=$2 t0=$SECONDS ok=true
	trap 'rm -f "$MEM_PID"' EXIT
	c_log "membership: step $step node $n"
	case $step in
	add) mem_add "$n" || ok=false ;;
	remove) mem_remove "$n" || ok=false ;;
	*) MEM_WHY="unknown step $step" ok=false ;;
	esac
	if ! $ok; then
		c_log "membership: FAILED: $MEM_WHY"
		echo "$step $n: $MEM_WHY" >>"$MEM_FAILED"
	fi
	nemesis_event membership "done" "\"step\": \"$step\", \"node\": $n, \"ok\": $ok, \"secs\": $((SECONDS - t0))"
}

nem_main "$@"
