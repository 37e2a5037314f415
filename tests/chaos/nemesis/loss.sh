#!/usr/bin/env bash
# loss: drop P% of the peer packets between nodes, chosen at random by
# nftables (numgen random mod 100 < P). heal deletes the table.
#   start P [TARGET]   all links, or only the links of TARGET (1..3, leader)
source "$(dirname "$0")/common.sh"
nem_start() {
	local p=${1:-20} t=${2:-all} a b n=""
	[[ $t == all ]] || n=$(resolve_target "$t")
	for a in "${CHAOS_NODES[@]}"; do
		for b in "${CHAOS_NODES[@]}"; do
			[[ $a != "$b" ]] || continue
			[[ -z $n || $a == "$n" || $b == "$n" ]] || continue
			nft_drop "$a" "$b" "$p"
		done
	done
	touch "$NEM_STATE"
	nemesis_event loss start "\"percent\": $p, \"node\": \"${n:-all}\""
}
nem_heal() {
	nft_remove_table
	if [[ -f $NEM_STATE ]]; then
		rm -f "$NEM_STATE"
		nemesis_event loss heal
	fi
}
nem_main "$@"
