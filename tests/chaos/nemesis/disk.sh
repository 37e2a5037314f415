#!/usr/bin/env bash
# disk: I/O errors in one node through libfiu. run.sh starts every node
# under `fiu-run -x` when this nemesis is chosen; start enables random
# failures (EIO, ENOSPC, ... as libfiu picks per call) of the positioned
# writes (pwrite, pwritev: LMDB's pages and meta) and the sync calls in
# that node's process with fiu-ctrl; heal disables them. Plain write and
# writev are left alone: libfiu cannot tell files from other descriptors,
# and failing libuv's eventfd wake-up write makes libuv abort() in a
# thread-pool thread, a fault no disk produces (seen: SIGABRT cores).
#   start PROBABILITY [TARGET]   e.g. 0.05 leader
source "$(dirname "$0")/common.sh"
FIU_POINTS=(posix/io/rw/pwrite posix/io/rw/pwritev posix/io/sync/fsync
	posix/io/sync/fdatasync)
nem_start() {
	local p=${1:-0.05} n pid fp
	n=$(resolve_target "${2:-leader}")
	pid=$(node_pid "$n")
	[[ -n $pid ]] || { c_log "disk: node $n not running"; return 0; }
	for fp in "${FIU_POINTS[@]}"; do
		timeout 5 fiu-ctrl -c "enable_random name=$fp,probability=$p" "$pid" ||
			c_log "disk: fiu-ctrl failed on node $n (pid $pid)"
	done
	echo "$n $pid" >"$NEM_STATE"
	nemesis_event disk start "\"node\": $n, \"probability\": $p"
}
nem_heal() {
	[[ -f $NEM_STATE ]] || return 0
	local n pid fp
	read -r n pid <"$NEM_STATE"
	if kill -0 "$pid" 2>/dev/null; then
		for fp in "${FIU_POINTS[@]}"; do
			timeout 5 fiu-ctrl -c "disable name=$fp" "$pid" || true
		done
	fi
	rm -f "$NEM_STATE"
	nemesis_event disk heal "\"node\": $n"
}
nem_main "$@"
