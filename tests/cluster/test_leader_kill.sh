#!/usr/bin/env bash
# Acceptance (issue 3): publish 20,000 messages with a window of 1000 while
# the leader of the queue's shard is SIGKILLed at a random moment. The
# publisher must end with every message confirmed; after the node is
# restarted a consumer must receive every message (lost = 0) and none twice
# (dup = 0).
#
# Usage: test_leader_kill.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init leader_kill 17100 "${1:-}"

N=20000
t_start
rmq queue declare q1

leader=$(t_wait_queue_leader q1) ||
	t_fail "queue list --json shows no leader for q1's shard"

timeout --kill-after=5 120 "$RAFTMQ_BIN/raftmq" --servers "$SERVERS" \
	publish q1 --count "$N" --window 1000 --prefix LK --timeout 60 \
	>"$RAFTMQ_DIR/publish.out" 2>"$RAFTMQ_DIR/publish.err" &
pub=$!

delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.3 + 1.7 * r / 32767 }')
sleep "$delay"
running=yes
kill -0 "$pub" 2>/dev/null || running="no (publisher already done)"
t_log "killing node $leader (leader of q1's shard) after ${delay}s; publisher running: $running"
t_kill "$leader"

pub_rc=0
wait "$pub" || pub_rc=$?
last=$(t_last_line "$RAFTMQ_DIR/publish.out")
t_log "publisher exit $pub_rc: $last"
if ((pub_rc != 0)); then
	tail -n 5 "$RAFTMQ_DIR/publish.err" >&2
	t_fail "publisher exited $pub_rc"
fi
[[ $last == *"confirmed=$N failed=0"* ]] ||
	t_fail "publisher's last line lacks 'confirmed=$N failed=0': $last"

t_restart "$leader"

rmq consume q1 --print --count "$N" --idle-timeout 10 \
	>"$RAFTMQ_DIR/bodies" 2>"$RAFTMQ_DIR/consume.err" ||
	t_fail "consume exited $? ($(t_last_line "$RAFTMQ_DIR/consume.err"))"
t_log "consumer: $(t_last_line "$RAFTMQ_DIR/consume.err")"
result=$(t_check_bodies "$RAFTMQ_DIR/bodies" LK "$N") ||
	t_fail "bodies: $result"

# Nothing left behind: a stored duplicate would show up here.
rmq consume q1 --print --idle-timeout 3 >"$RAFTMQ_DIR/rest" 2>/dev/null ||
	t_fail "second consume failed"
extra=$(wc -l <"$RAFTMQ_DIR/rest")
((extra == 0)) || t_fail "$extra more message(s) in q1 after consuming all $N"

echo "lost=0 dup=0"
t_pass "$result; killed node $leader after ${delay}s"
