#!/usr/bin/env bash
# restart-all: SIGKILL every node at once; heal restarts them all.
source "$(dirname "$0")/common.sh"
nem_start() {
	local n
	for n in "${CHAOS_NODES[@]}"; do kill_node "$n" & done
	wait
	touch "$NEM_STATE"
	nemesis_event restart-all start
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	local n
	for n in "${CHAOS_NODES[@]}"; do start_node "$n"; done
	rm -f "$NEM_STATE"
	nemesis_event restart-all heal
}
nem_main "$@"
