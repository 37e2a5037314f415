# shellcheck shell=bash
# Sourced by deploy/local-cluster.sh and tests/chaos/lib.sh: both start
# raftmqd in the background and track it by a pid file.

# raftmqd_pid FILE: print the pid FILE holds if that process is a live
# raftmqd, else nothing. A process started a moment ago may not have
# exec'd raftmqd yet (its cmdline is still the starting shell's): it gets
# 2 s to get there. The file is left as it is.
raftmqd_pid() {
	local f=$1 pid i
	[[ -f $f ]] || return 0
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	for ((i = 0; i < 20; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		if grep -qa raftmqd "/proc/$pid/cmdline" 2>/dev/null; then
			echo "$pid"
			return 0
		fi
		sleep 0.1
	done
}
