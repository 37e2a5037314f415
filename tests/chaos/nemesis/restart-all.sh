#!/usr/bin/env bash
# restart-all: SIGKILL every node at once; heal restarts them all (the
# nodes that should be running at heal time: a node the membership
# nemesis removed meanwhile stays down).
source "$(dirname "$0")/common.sh"
nem_start() {
	local n
	for n in "${CHAOS_NODES[@]}"; do kill_node "$n" & done
	wait
	touch "$NEM_STATE"
	nemesis_event restart-all start
}
start_nodes_locked() {
	local n
	chaos_refresh_nodes
	for n in "${CHAOS_NODES[@]}"; do start_node "$n"; done
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	members_locked start_nodes_locked
	rm -f "$NEM_STATE"
	nemesis_event restart-all heal
}
nem_main "$@"
