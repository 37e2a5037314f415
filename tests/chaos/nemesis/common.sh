# shellcheck shell=bash
# Sourced by every nemesis: the shared library and the start/heal/run
# dispatch. A nemesis defines nem_start ARGS... and nem_heal; then
#   nemesis/NAME.sh start ARGS...   inject the fault, return at once
#   nemesis/NAME.sh heal            undo it (idempotent, safe to repeat)
#   nemesis/NAME.sh run SECS ARGS.. start, hold SECS, heal; healed on any
#                                   exit (trap), also on SIGINT/SIGTERM
#   nemesis/NAME.sh settle          wait for work the nemesis left running
#                                   in the background; exit 1 if it failed
#                                   (nem_settle; no-op if not defined)
#   nemesis/NAME.sh abort           stop that work at once (nem_abort)
# Any other verb V runs nem_verb_V if the nemesis defines it.
# Needs CHAOS_DIR (and the other CHAOS_* variables of lib.sh) in the
# environment. Events go to $CHAOS_DIR/nemesis.jsonl.
set -euo pipefail
NEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib.sh
source "$NEM_DIR/../lib.sh"
: "${CHAOS_DIR:?CHAOS_DIR must name the run directory}"
: "${CHAOS_BIN:?CHAOS_BIN must name the directory of raftmqd}"
chaos_refresh_nodes
NEM_NAME=$(basename "$0" .sh)
NEM_STATE=$CHAOS_DIR/nemesis-$NEM_NAME.state

# Resolve a target word to the id of a node that should be running
# (CHAOS_NODES: members, and nodes being added or removed): a number (that
# node if it is one of them, else the number-th of them, cyclically: the
# schedule's 1..3 stay valid after the membership nemesis replaced nodes
# 1..3), "leader" (the leader of the shard of chaos-q0, a busy shard),
# "meta" (meta shard leader) or "random" (uses $RANDOM, seeded by the
# caller through NEM_RANDOM). Falls back to a random one of them.
resolve_target() {
	local t=$1 id="" nodes=("${CHAOS_NODES[@]}")
	case $t in
	[0-9]*) id=$t ;;
	leader) id=$(busy_leader 2>/dev/null || true) ;;
	meta) id=$(shard_leader 0 2>/dev/null || true) ;;
	esac
	if [[ $t =~ ^[0-9]+$ && " ${nodes[*]} " != *" $id "* ]]; then
		id=${nodes[$(((t + ${#nodes[@]} - 1) % ${#nodes[@]}))]}
	fi
	if [[ -z $id || " ${nodes[*]} " != *" $id "* ]]; then
		id=${nodes[$((${NEM_RANDOM:-$RANDOM} % ${#nodes[@]}))]}
	fi
	echo "$id"
}

nem_main() {
	local cmd=${1:-}
	shift || true
	case $cmd in
	start) nem_start "$@" ;;
	heal) nem_heal ;;
	run)
		local secs=$1
		shift
		trap 'nem_heal' EXIT
		trap 'exit 143' TERM
		trap 'exit 130' INT
		nem_start "$@"
		sleep "$secs"
		;;
	settle) if declare -F nem_settle >/dev/null; then nem_settle; fi ;;
	abort) if declare -F nem_abort >/dev/null; then nem_abort; fi ;;
	*)
		if [[ -n $cmd ]] && declare -F "nem_verb_$cmd" >/dev/null; then
			"nem_verb_$cmd" "$@"
			return
		fi
		echo "usage: $0 start ARGS... | heal | run SECONDS ARGS... | settle | abort" >&2
		exit 2
		;;
	esac
}
