#!/usr/bin/env bash
# deploy/raftmqd.service must pass `systemd-analyze verify` without a single
# complaint (verify exits 0 on unknown keys and bad values, so any output
# fails the test). ExecStart is pointed at the built raftmqd, since verify
# also checks that the binary exists. Skipped (exit 77) if systemd-analyze
# is not installed (Debian: package systemd).
#
# Usage: test_systemd_unit.sh SOURCE_DIR BUILD_BIN_DIR
set -euo pipefail
src=$1 bin=$2

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "SKIP: systemd-analyze not installed (apt-get install systemd); deploy/raftmqd.service not verified"
	exit 77
fi
unit=$src/deploy/raftmqd.service
grep -q '^Type=notify$' "$unit" || {
	echo "FAIL: $unit is not Type=notify"
	exit 1
}
grep -q '^ExecStart=/usr/local/bin/raftmqd ' "$unit" || {
	echo "FAIL: $unit: ExecStart does not start /usr/local/bin/raftmqd"
	exit 1
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s#^ExecStart=/usr/local/bin/raftmqd #ExecStart=$bin/raftmqd #" "$unit" \
	>"$dir/raftmqd.service"
rc=0
out=$(systemd-analyze verify "$dir/raftmqd.service" 2>&1) || rc=$?
if ((rc != 0)) || [[ -n $out ]]; then
	printf '%s\n' "$out"
	echo "FAIL: systemd-analyze verify: exit $rc, $(printf '%s\n' "$out" | grep -c .) line(s) of complaints"
	exit 1
fi
echo "ok: systemd-analyze verify deploy/raftmqd.service (systemd $(systemd-analyze --version | awk 'NR == 1 { print $2 }'))"
