#!/usr/bin/env bash
# Messages handed out by a leader that dies before they are acked come
# again from the new leader, flagged redelivered, and nothing is lost or
# stored twice.
#
# Usage: test_redelivered.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init redelivered 18900 "${1:-}"

N=50
HOLD=10
t_start
rmq queue declare q >/dev/null
out=$(rmq publish q --count "$N" --prefix RD --timeout 20 | tail -n 1)
[[ $out == *"confirmed=$N failed=0"* ]] || t_fail "publish: $out"

# The leader may move between the lookup and the subscribe (leaders are
# rebalanced, and a loaded machine sees elections): look again then.
for ((try = 1; try <= 5; try++)); do
	leader=$(t_wait_queue_leader q) || t_fail "no leader for q"
	python3 "$(dirname "$0")/rawclient.py" "$(t_client_addr "$leader")" \
		hold q "$HOLD" >"$RAFTMQ_DIR/held" 2>&1 &
	holder=$!
	T_EXTRA_PIDS+=("$holder")
	for ((i = 0; i < 100; i++)); do
		grep -q "^held" "$RAFTMQ_DIR/held" 2>/dev/null && break
		kill -0 "$holder" 2>/dev/null || break
		sleep 0.1
	done
	grep -q '^held' "$RAFTMQ_DIR/held" && break
	grep -q 'does not lead' "$RAFTMQ_DIR/held" ||
		t_fail "holder: $(cat "$RAFTMQ_DIR/held")"
	t_log "node $leader no longer leads q's shard; looking again"
	sleep 1
done
grep -q '^held' "$RAFTMQ_DIR/held" || t_fail "holder got no deliveries"
t_log "node $leader handed out: $(cat "$RAFTMQ_DIR/held")"
t_kill "$leader"
wait "$holder" || true

rmq consume q --print --count "$N" --idle-timeout 10 \
	>"$RAFTMQ_DIR/bodies" 2>"$RAFTMQ_DIR/consume.err" ||
	t_fail "consume exited $? ($(t_last_line "$RAFTMQ_DIR/consume.err"))"
last=$(t_last_line "$RAFTMQ_DIR/consume.err")
result=$(t_check_bodies "$RAFTMQ_DIR/bodies" RD "$N") ||
	t_fail "bodies: $result"
redelivered=$(sed -n 's/.*redelivered=\([0-9]*\).*/\1/p' <<<"$last")
((redelivered >= HOLD)) ||
	t_fail "only $redelivered of the $HOLD held messages came flagged redelivered ($last)"
t_pass "$result; $last"
