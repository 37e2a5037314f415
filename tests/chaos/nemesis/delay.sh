#!/usr/bin/env bash
# delay: slow or jittery links through tests/chaos/proxy.py (run.sh starts
# the proxy and names its ports in initial_cluster when this nemesis is
# chosen). heal empties the proxy's rules.
#   start DELAY_MS JITTER_MS [TARGET]   all links (default), or the links
#                                       to and from TARGET (1..3, leader)
source "$(dirname "$0")/common.sh"
nem_start() {
	local d=${1:-100} j=${2:-50} t=${3:-all} n=""
	[[ $CHAOS_PROXY == 1 ]] || c_log "delay: the cluster does not run through the proxy"
	if [[ $t == all ]]; then
		echo "* * $d $j" >"$CHAOS_DIR/proxy.conf.tmp"
	else
		n=$(resolve_target "$t")
		printf '%s * %s %s\n* %s %s %s\n' "$n" "$d" "$j" "$n" "$d" "$j" \
			>"$CHAOS_DIR/proxy.conf.tmp"
	fi
	mv "$CHAOS_DIR/proxy.conf.tmp" "$CHAOS_DIR/proxy.conf"
	touch "$NEM_STATE"
	nemesis_event delay start "\"delay_ms\": $d, \"jitter_ms\": $j, \"node\": \"${n:-all}\""
}
nem_heal() {
	: >"$CHAOS_DIR/proxy.conf"
	if [[ -f $NEM_STATE ]]; then
		rm -f "$NEM_STATE"
		nemesis_event delay heal
	fi
}
nem_main "$@"
