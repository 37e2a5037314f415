# shellcheck shell=bash
# Sourced by every nemesis: the shared library and the start/heal/run
# dispatch. A nemesis defines nem_start ARGS... and nem_heal; then
#   nemesis/NAME.sh start ARGS...   inject the fault, return at once
#   nemesis/NAME.sh heal            undo it (idempotent, safe to repeat)
#   nemesis/NAME.sh run SECS ARGS.. start, hold SECS, heal; healed on any
#                                   exit (trap), also on SIGINT/SIGTERM
# Needs CHAOS_DIR (and the other CHAOS_* variables of lib.sh) in the
# environment. Events go to $CHAOS_DIR/nemesis.jsonl.
set -euo pipefail
NEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib.sh
source "$NEM_DIR/../lib.sh"
: "${CHAOS_DIR:?CHAOS_DIR must name the run directory}"
: "${CHAOS_BIN:?CHAOS_BIN must name the directory of raftmqd}"
NEM_NAME=$(basename "$0" .sh)
NEM_STATE=$CHAOS_DIR/nemesis-$NEM_NAME.state

# Resolve a target word to a node id: a number, "leader" (the leader of
# the shard of chaos-q0, a busy shard), "meta" (meta shard leader) or
# "random" (uses $RANDOM, seeded by the caller through NEM_RANDOM).
resolve_target() {
	local t=$1 id=""
	case $t in
	[1-3]) id=$t ;;
	leader) id=$(busy_leader 2>/dev/null || true) ;;
	meta) id=$(shard_leader 0 2>/dev/null || true) ;;
	esac
	if ! [[ $id =~ ^[1-3]$ ]]; then
		id=$((${NEM_RANDOM:-$RANDOM} % 3 + 1))
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
	*)
		echo "usage: $0 start ARGS... | heal | run SECONDS ARGS..." >&2
		exit 2
		;;
	esac
}
