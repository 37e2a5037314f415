#!/usr/bin/env bash
# kill: SIGKILL one node (a crash); heal restarts it on its data, unless
# the membership nemesis removed it from the cluster meanwhile (a removed
# node never starts again).
#   start TARGET   TARGET: a node id, leader (of a busy shard), meta, random
#                  (see resolve_target: any node that should be running)
source "$(dirname "$0")/common.sh"
kill_locked() {
	echo "$1" >"$NEM_STATE"
	kill_node "$1"
}
heal_locked() {
	local n=$1
	if [[ $(node_state "$n") == removed ]]; then
		nemesis_event kill heal "\"node\": $n, \"restarted\": false"
	else
		start_node "$n"
		nemesis_event kill heal "\"node\": $n"
	fi
	rm -f "$NEM_STATE"
}
nem_start() {
	local n
	n=$(resolve_target "${1:-leader}")
	members_locked kill_locked "$n"
	nemesis_event kill start "\"node\": $n"
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	members_locked heal_locked "$(<"$NEM_STATE")"
}
nem_main "$@"
