#!/usr/bin/env bash
# Queue lifecycle across shards and snapshots:
#  1. delete + re-declare: the new incarnation starts empty (the old
#     messages are gone), even when it lands on another shard, and the
#     other queues of those shards keep accepting publishes;
#  2. a node that was down while queues were declared and deleted catches
#     up through a snapshot (tiny snapshot threshold) and then serves the
#     queues of the shard it leads, and refuses the deleted ones.
#
# Usage: test_queue_lifecycle.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init queue_lifecycle 18300 "${1:-}"

export RAFTMQ_EXTRA_CONFIG=$'[raft]\nsnapshot_threshold=16\nsnapshot_trailing=2'
t_start

# ---- 1. delete and declare again ----
rmq queue declare x
rmq publish x --count 100 --prefix OLD >/dev/null || t_fail "publish x"
rmq queue delete x
rmq queue declare w # moves the least-loaded shard for the next declare
rmq queue declare x
out=$(rmq publish x --count 10 --prefix NEW --timeout 20 | tail -n 1)
[[ $out == *"confirmed=10 failed=0"* ]] || t_fail "publish to new x: $out"
rmq consume x --print --idle-timeout 3 >"$RAFTMQ_DIR/x.bodies" \
	2>"$RAFTMQ_DIR/x.err" || t_fail "consume x"
result=$(t_check_bodies "$RAFTMQ_DIR/x.bodies" NEW 10) ||
	t_fail "new incarnation of x: $result"
for q in w fresh1 fresh2 fresh3; do
	[[ $q == w ]] || rmq queue declare "$q" >/dev/null
	out=$(rmq publish "$q" --count 5 --timeout 20 | tail -n 1)
	[[ $out == *"confirmed=5 failed=0"* ]] ||
		t_fail "publish to $q after the re-declare: $out"
done
t_log "ok: delete + re-declare ($result)"

# ---- 2. catch up through a snapshot ----
t_kill 3
for i in $(seq 0 39); do
	rmq queue declare "s$i" >/dev/null || t_fail "declare s$i while node 3 is down"
done
for i in 0 1 2; do
	rmq queue delete "s$i" >/dev/null || t_fail "delete s$i while node 3 is down"
done
t_restart 3
# Wait until node 3 leads a data shard again (leaders are rebalanced).
shard=""
for ((i = 0; i < 150; i++)); do
	shard=$(rmq cluster status --json | python3 -c '
import json, sys
for s in json.load(sys.stdin)["shards"]:
    if s["id"] > 0 and s["leader"] == 3:
        print(s["id"]); break
' || true)
	[[ -n $shard ]] && break
	sleep 0.2
done
[[ -n $shard ]] || t_fail "node 3 leads no data shard 30 s after its restart"
# The meta shard's install fetches the state from a peer first (catchup.c):
# it may complete after node 3 was elected somewhere.
for ((i = 0; i < 150; i++)); do
	ls "$RAFTMQ_DIR"/node3/shard-0/raft | grep -q '^snapshot-' && break
	sleep 0.2
done
ls "$RAFTMQ_DIR"/node3/shard-0/raft | grep -q '^snapshot-' ||
	t_fail "node 3 installed no meta snapshot 30 s after it led (test setup)"
n=0
for i in $(seq 3 39); do
	q=s$i
	qshard=$(rmq queue list --json | python3 -c '
import json, sys
for q in json.load(sys.stdin):
    if q["name"] == sys.argv[1]: print(q["shard"])
' "$q")
	[[ $qshard == "$shard" ]] || continue
	out=$(rmq publish "$q" --count 1 --timeout 20 | tail -n 1)
	[[ $out == *"confirmed=1 failed=0"* ]] ||
		t_fail "publish to $q (shard $shard, led by node 3): $out"
	n=$((n + 1))
done
((n > 0)) || t_fail "no queue of shard $shard among s3..s39"
for i in 0 1 2; do
	t_expect_fail "publish to deleted s$i" "not found" \
		rmq publish "s$i" --body x
done
t_pass "delete/re-declare; node 3 after a snapshot served $n queue(s) of shard $shard"
