#!/usr/bin/env bash
# partition: nftables rules (table inet raftmq_chaos_<port base>) dropping peer traffic
# between node addresses 127.0.0.X and 127.0.0.Y. Client traffic is not
# touched. heal deletes the table.
#   start isolate TARGET   TARGET cut from both others (with 3 nodes, the
#                          majority/minority split): 1..3, leader, random
#   start bridge TARGET    the two others cannot talk; TARGET sees both
#   start oneway TARGET    TARGET's packets to the others are dropped; it
#                          still receives theirs
source "$(dirname "$0")/common.sh"
nem_start() {
	local mode=${1:-isolate} n o others=()
	n=$(resolve_target "${2:-leader}")
	for o in "${CHAOS_NODES[@]}"; do [[ $o == "$n" ]] || others+=("$o"); done
	case $mode in
	isolate)
		for o in "${others[@]}"; do nft_drop "$n" "$o"; nft_drop "$o" "$n"; done
		;;
	bridge)
		nft_drop "${others[0]}" "${others[1]}"
		nft_drop "${others[1]}" "${others[0]}"
		;;
	oneway)
		for o in "${others[@]}"; do nft_drop "$n" "$o"; done
		;;
	*)
		echo "partition: unknown mode $mode" >&2
		exit 2
		;;
	esac
	touch "$NEM_STATE"
	nemesis_event partition start "\"mode\": \"$mode\", \"node\": $n"
}
nem_heal() {
	nft_remove_table
	if [[ -f $NEM_STATE ]]; then
		rm -f "$NEM_STATE"
		nemesis_event partition heal
	fi
}
nem_main "$@"
