#!/usr/bin/env bash
# Acceptance (issue 3, point 10): bad input gets a clear error and touches
# nothing else. Each case checks the error it gets, that the node is still
# alive, and that the cluster still serves a publish + consume round-trip.
#
#   a  truncated frame, then close            -> server survives
#   b  frame header announcing 2^31 bytes     -> closed within 2 s
#   c  garbage bytes as protobuf              -> closed within 2 s
#   d  message over max_message_size          -> "message too large: N > M"
#   e  publish to an unknown queue            -> "not found"
#   f  re-declare with other settings         -> "exists"
#   g  a peer from another cluster            -> node 1 logs "peer rejected"
#   h  LMDB map full (a second, tiny cluster) -> "full", node keeps serving,
#                                                confirmed messages consumable
#
# Usage: test_bad_input.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init bad_input 17700 "${1:-}"

t_node_alive() {
	local pid
	pid=$(cat "$RAFTMQ_DIR/node$1.pid" 2>/dev/null || true)
	if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
		t_fail "node $1 is no longer running"
	fi
}

raw() {
	timeout 20 python3 "$RAWCLIENT" "$@"
}

t_start
rmq queue declare q
t_roundtrip

NODE1=$(t_client_addr 1)

# a: truncated frame, then close.
raw "$NODE1" truncated || t_fail "a: could not send the truncated frame"
sleep 0.5
t_node_alive 1
raw "$NODE1" hello >&2 || t_fail "a: node 1 no longer answers Hello"
t_log "ok: a (truncated frame: node 1 survives)"
t_roundtrip

# b: a frame header announcing 2^31 bytes (max_frame is 16 MiB).
out=$(raw "$NODE1" huge) || t_fail "b: $out"
t_log "ok: b ($out)"
t_node_alive 1
raw "$NODE1" hello >&2 || t_fail "b: node 1 no longer answers Hello"
t_roundtrip

# c: garbage where a Request should be.
out=$(raw "$NODE1" garbage) || t_fail "c: $out"
t_log "ok: c ($out)"
t_node_alive 1
t_roundtrip

# d: a message over the default max message size (8 MiB).
t_expect_fail "d: oversized message" "message too large: 9000000 > 8388608" \
	rmq publish q --count 1 --size 9000000 --timeout 30
t_roundtrip

# e: unknown queue.
t_expect_fail "e: publish to an unknown queue" "not found" \
	rmq publish no-such-queue --body x --timeout 30
t_roundtrip

# f: declaring an existing queue again: same settings is fine, others not.
rmq queue declare q >/dev/null || t_fail "f: re-declare with the same settings failed"
t_expect_fail "f: re-declare with other settings" "exists" \
	rmq queue declare q --max-length 10
t_roundtrip

# f2: publish ordering fence. A publish refused with a retryable error
# (NOT_LEADER, NOT_FOUND, ...) fences its queue on that connection: later
# publishes of the same resend epoch are refused, so none of them can be
# stored ahead of the refused one the client will resend.
# Leader balancing may move q's shard during the check (its first round
# comes 5 s after start, about now): a check whose leader changed under it
# runs again; one whose leader held fails.
for ((try = 1; ; try++)); do
	leader=$(t_wait_queue_leader q) || t_fail "f2: no leader for q"
	follower=$((leader % 3 + 1))
	what="fence on follower $follower"
	if out=$(raw "$(t_client_addr "$follower")" fence q); then
		what="fence on leader $leader"
		out=$(raw "$(t_client_addr "$leader")" fence-leader q) && break
	fi
	now=$(t_wait_queue_leader q) || t_fail "f2: no leader for q"
	((now != leader && try < 5)) || t_fail "f2: $what: $out"
	t_log "f2: q's shard moved from node $leader to node $now; again"
done
t_log "ok: f2 (fence: refused publishes are not overtaken)"
t_roundtrip

# g: a node of another cluster knocks on node 1's peer port.
P=$((RAFTMQ_PORT_BASE + 9))
before=$(grep -cF "peer rejected" "$RAFTMQ_DIR/node1.log" || true)
mkdir -p "$RAFTMQ_DIR/node9"
# Started from a subshell, so that it is not a job of this shell (no
# "Killed" notice); setsid+nohup exec in place, so $! is raftmqd itself.
pid9=$(
	setsid nohup "$RAFTMQ_BIN/raftmqd" --id 9 --data-dir "$RAFTMQ_DIR/node9" \
		--client-address "127.0.0.1:$P" --peer-address "127.0.0.1:$((P + 100))" \
		--http-address "127.0.0.1:$((P + 200))" --bind-address 127.0.0.1 \
		--cluster-name other \
		--initial-cluster "9@127.0.0.1:$((P + 100)),1@$(t_peer_addr 1)" \
		</dev/null >>"$RAFTMQ_DIR/node9.log" 2>&1 &
	echo $!
)
T_EXTRA_PIDS+=("$pid9")
t_wait_log "$RAFTMQ_DIR/node1.log" "peer rejected" 10 $((before + 1)) ||
	t_fail "g: node 1 logged no 'peer rejected' within 10 s of a foreign peer"
t_log "ok: g ($(grep -F "peer rejected" "$RAFTMQ_DIR/node1.log" | tail -n 1))"
kill -KILL "$pid9" 2>/dev/null || true
t_node_alive 1
t_roundtrip

# h: LMDB map full, on a second cluster with a 4 MiB map per shard. Stop
# the first one to leave the CPUs to it.
"$LC" stop >/dev/null
RAFTMQ_DIR=$(cd "$(mktemp -d "$RAFTMQ_BIN/../cluster-tests/bad_input_full.XXXXXX")" && pwd)
export RAFTMQ_DIR
T_DIRS+=("$RAFTMQ_DIR")
export RAFTMQ_PORT_BASE=18000
export RAFTMQ_EXTRA_CONFIG='[limits]\nmap_size_mb=4'
SERVERS=$(t_servers "$RAFTMQ_PORT_BASE")
export RAFTMQ_SERVERS=$SERVERS
t_log "map-full cluster: dir $RAFTMQ_DIR, ports $RAFTMQ_PORT_BASE+N"
t_start
rmq queue declare qf

pub_rc=0
rmq publish qf --count 20000 --size 1024 --window 100 --prefix MF --timeout 60 \
	>"$RAFTMQ_DIR/publish.out" 2>"$RAFTMQ_DIR/publish.err" || pub_rc=$?
last=$(t_last_line "$RAFTMQ_DIR/publish.out")
t_log "h: publish exit $pub_rc: $last"
((pub_rc == 1)) || t_fail "h: publish into a full map exited $pub_rc, want 1"
grep -qi "full" "$RAFTMQ_DIR/publish.out" "$RAFTMQ_DIR/publish.err" ||
	t_fail "h: publish failed without saying 'full': $(t_last_line "$RAFTMQ_DIR/publish.err")"
confirmed=$(sed -n 's/.*confirmed=\([0-9]*\).*/\1/p' <<<"$last")
[[ -n $confirmed ]] || t_fail "h: no confirmed=<n> in '$last'"
((confirmed > 0)) || t_fail "h: nothing confirmed before the map filled up"

for n in 1 2 3; do
	t_node_alive "$n"
done
rmq cluster status >&2 || t_fail "h: cluster status fails after map full"

rmq consume qf --print --idle-timeout 10 >"$RAFTMQ_DIR/bodies" \
	2>"$RAFTMQ_DIR/consume.err" || t_fail "h: consume failed after map full"
result=$(python3 - "$RAFTMQ_DIR/bodies" "$confirmed" <<'PY'
import collections, sys
lines = [l.rstrip("\n").rstrip(".") for l in open(sys.argv[1])]
confirmed = int(sys.argv[2])
c = collections.Counter(lines)
dup = sum(1 for v in c.values() if v > 1)
alien = sum(1 for b in c if not b.startswith("MF-"))
print("consumed=%d confirmed=%d dup=%d unexpected=%d" % (len(lines), confirmed, dup, alien))
sys.exit(0 if len(lines) >= confirmed and not dup and not alien else 1)
PY
) || t_fail "h: $result"
t_log "ok: h (map full: $result)"
# With the queue drained, the space is free again.
t_roundtrip

t_pass "cases a-h"
