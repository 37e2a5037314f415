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

# The kill must land while the publisher runs: SIGKILL the leader after a
# random delay within the first part of the run. A machine fast enough to
# finish first gets another round on a fresh queue.
killed=""
for round in 1 2 3 4 5; do
	Q=q$round
	rmq queue declare "$Q"
	leader=$(t_wait_queue_leader "$Q") ||
		t_fail "queue list --json shows no leader for $Q's shard"
	timeout --kill-after=5 120 "$RAFTMQ_BIN/raftmq" --servers "$SERVERS" \
		publish "$Q" --count "$N" --size 1024 --window 1000 \
		--prefix "LK$round" --timeout 60 \
		>"$RAFTMQ_DIR/publish.out" 2>"$RAFTMQ_DIR/publish.err" &
	pub=$!
	delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.05 + 0.35 * r / 32767 }')
	sleep "$delay"
	if kill -0 "$pub" 2>/dev/null; then
		t_log "round $round: killing node $leader (leader of $Q's shard) after ${delay}s"
		t_kill "$leader"
		killed=yes
	else
		t_log "round $round: publisher finished within ${delay}s; again"
	fi
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
	[[ -n $killed ]] && break
	rmq queue delete "$Q"
done
[[ -n $killed ]] || t_fail "the publisher always finished before the kill"

t_restart "$leader"

rmq consume "$Q" --print --count "$N" --idle-timeout 10 \
	>"$RAFTMQ_DIR/bodies" 2>"$RAFTMQ_DIR/consume.err" ||
	t_fail "consume exited $? ($(t_last_line "$RAFTMQ_DIR/consume.err"))"
t_log "consumer: $(t_last_line "$RAFTMQ_DIR/consume.err")"
result=$(t_check_bodies "$RAFTMQ_DIR/bodies" "LK$round" "$N") ||
	t_fail "bodies: $result"

# Nothing left behind: a stored duplicate would show up here.
rmq consume "$Q" --print --idle-timeout 3 >"$RAFTMQ_DIR/rest" 2>/dev/null ||
	t_fail "second consume failed"
extra=$(wc -l <"$RAFTMQ_DIR/rest")
((extra == 0)) || t_fail "$extra more message(s) in $Q after consuming all $N"

echo "lost=0 dup=0"
t_pass "$result; killed node $leader in round $round"
