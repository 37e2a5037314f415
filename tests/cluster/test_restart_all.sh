#!/usr/bin/env bash
# Acceptance (issue 3): SIGKILL all three nodes right after a publish run,
# start them again: every confirmed message is still there, once.
#
# Usage: test_restart_all.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init restart_all 17400 "${1:-}"

N=5000
t_start
rmq queue declare q
rmq publish q --count "$N" --window 1000 --prefix RA --timeout 60 \
	>"$RAFTMQ_DIR/publish.out" || t_fail "publish exited $?"
last=$(t_last_line "$RAFTMQ_DIR/publish.out")
[[ $last == *"confirmed=$N failed=0"* ]] || t_fail "publish: $last"

t_kill 1 2 3
# start brings every stopped node back and waits for a leader per shard.
t_start

rmq consume q --print --count "$N" --idle-timeout 10 \
	>"$RAFTMQ_DIR/bodies" 2>"$RAFTMQ_DIR/consume.err" ||
	t_fail "consume exited $? ($(t_last_line "$RAFTMQ_DIR/consume.err"))"
result=$(t_check_bodies "$RAFTMQ_DIR/bodies" RA "$N") ||
	t_fail "bodies: $result"

rmq consume q --print --idle-timeout 3 >"$RAFTMQ_DIR/rest" 2>/dev/null ||
	t_fail "second consume failed"
extra=$(wc -l <"$RAFTMQ_DIR/rest")
((extra == 0)) || t_fail "$extra more message(s) in q after consuming all $N"

t_pass "$result"
