#!/usr/bin/env bash
# diskfull: fill node 3's data file system (run.sh mounts a small ext4
# loop image on $CHAOS_DIR/node3 when this nemesis is chosen) with a
# ballast file, leaving almost nothing free; heal deletes the ballast.
#   start [NODE]   default 3 (the node with the small file system)
source "$(dirname "$0")/common.sh"
nem_start() {
	local n=${1:-3} dir free_kb
	dir=$CHAOS_DIR/node$n
	mountpoint -q "$dir" || c_log "diskfull: $dir is not a mount point: filling the host fs is refused"
	mountpoint -q "$dir" || return 0
	free_kb=$(df -k --output=avail "$dir" | tail -n 1 | tr -d ' ')
	if ((free_kb > 64)); then
		fallocate -l "$(((free_kb - 32) * 1024))" "$dir/ballast" ||
			dd if=/dev/zero of="$dir/ballast" bs=64k status=none || true
	fi
	echo "$n" >"$NEM_STATE"
	nemesis_event diskfull start "\"node\": $n, \"free_kb_before\": $free_kb"
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	local n
	n=$(<"$NEM_STATE")
	rm -f "$CHAOS_DIR/node$n/ballast"
	rm -f "$NEM_STATE"
	nemesis_event diskfull heal "\"node\": $n"
}
nem_main "$@"
