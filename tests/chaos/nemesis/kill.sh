#!/usr/bin/env bash
# kill: SIGKILL one node (a crash); heal restarts it on its data.
#   start TARGET   TARGET: 1..3, leader (of a busy shard), meta, random
source "$(dirname "$0")/common.sh"
nem_start() {
	local n
	n=$(resolve_target "${1:-leader}")
	echo "$n" >"$NEM_STATE"
	kill_node "$n"
	nemesis_event kill start "\"node\": $n"
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	local n
	n=$(<"$NEM_STATE")
	start_node "$n"
	rm -f "$NEM_STATE"
	nemesis_event kill heal "\"node\": $n"
}
nem_main "$@"
