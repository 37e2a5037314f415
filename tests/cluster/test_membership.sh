#!/usr/bin/env bash
# Acceptance (issue 6, membership): three nodes under continuous publish +
# consume load (raftmq-chaos-workload); node 4 is added, node 1 removed,
# node 2 crashed (SIGKILL) and restarted. At the end every shard has three
# voters, nodes 2-4, data shard leaders are spread over them (one each),
# the restarted node leads a data shard again within 60 s without a command, and the history checker
# finds no confirmed message lost and none stored twice.
#
# Usage: test_membership.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init membership 25100 "${1:-}"

t_start
SERVERS="$SERVERS,$(t_client_addr 4)"
export RAFTMQ_SERVERS=$SERVERS

t_workload_start 45 6
sleep 5

t_log "adding node 4"
"$LC" add 4 || t_fail "local-cluster add 4 failed"
sleep 3
t_log "removing node 1"
"$LC" remove 1 || t_fail "local-cluster remove 1 failed"
rmq node list
sleep 3

t_log "crashing node 2, then restarting it"
t_kill 2
sleep 2
t_restart 2
t0=$SECONDS
led=""
while ((SECONDS - t0 < 60)); do
	led=$(rmq cluster status --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(str(s["id"]) for s in d["shards"] if s["id"] > 0 and s.get("leader") == 2))
' 2>/dev/null || true)
	[[ -n $led ]] && break
	sleep 1
done
[[ -n $led ]] || t_fail "node 2 leads no data shard 60 s after its restart"
t_log "node 2 leads shard(s) $led $((SECONDS - t0)) s after its restart"

t_workload_check
tail -n 1 "$RAFTMQ_DIR/check.txt" >&2

# Final shape: nodes 2-4 are the voters of every shard, leaders spread.
shape=""
for ((i = 0; i < 60; i++)); do
	if shape=$(
		{
			rmq node list --json
			rmq cluster status --json
		} | python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
nodes, status = json.loads(lines[0]), json.loads(lines[1])
roles = {n["id"]: n["role"] for n in nodes}
if roles != {2: "voter", 3: "voter", 4: "voter"}:
    print("node roles %s" % roles); sys.exit(1)
leaders = {}
for s in status["shards"]:
    if sorted(s["replicas"]) != [2, 3, 4]:
        print("shard %d replicas %s" % (s["id"], s["replicas"])); sys.exit(1)
    if s["id"] > 0:
        leaders[s["leader"]] = leaders.get(s["leader"], 0) + 1
if sorted(leaders) != [2, 3, 4]:
    print("leaders per node %s" % leaders); sys.exit(1)
print("replicas 2,3,4 on every shard; data shard leaders per node %s" % leaders)
'
	); then
		break
	fi
	sleep 1
done
t_log "$shape"
[[ $shape == replicas* ]] || t_fail "final shape: $shape"
t_pass "$(tail -n 1 "$RAFTMQ_DIR/check.txt")"
