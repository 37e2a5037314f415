#!/usr/bin/env bash
# pause: SIGSTOP one node (a long GC-like pause; hold it longer than the
# election timeout); heal sends SIGCONT.
#   start TARGET   TARGET: 1..3, leader, meta, random
source "$(dirname "$0")/common.sh"
nem_start() {
	local n pid
	n=$(resolve_target "${1:-leader}")
	pid=$(node_pid "$n")
	[[ -n $pid ]] || { c_log "pause: node $n not running"; return 0; }
	echo "$n $pid" >"$NEM_STATE"
	kill -STOP "$pid"
	nemesis_event pause start "\"node\": $n"
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	local n pid
	read -r n pid <"$NEM_STATE"
	kill -CONT "$pid" 2>/dev/null || true
	rm -f "$NEM_STATE"
	nemesis_event pause heal "\"node\": $n"
}
nem_main "$@"
