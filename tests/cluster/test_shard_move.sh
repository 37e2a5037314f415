#!/usr/bin/env bash
# Replica placement (issue 6): with four members and replication_factor 3
# every data shard has three voters, the replica counts are even (the meta
# leader moved replicas onto the new node by itself), and `raftmq shard
# move S --from A --to B --wait` moves one replica while producers and
# consumers run: B becomes a voter of S, A leaves it, the shard keeps
# three voters; the balance does not undo it. The replica then moves back
# to A (which held it before), B is killed, and the history checker finds
# nothing lost or duplicated. Also: a node that does not replicate a shard still
# reports its leader (topology from the meta shard's record).
#
# Usage: test_shard_move.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init shard_move 21100 "${1:-}"

t_start
SERVERS="$SERVERS,$(t_client_addr 4)"
export RAFTMQ_SERVERS=$SERVERS

t_workload_start 40 11
sleep 3

t_log "adding node 4"
"$LC" add 4 || t_fail "local-cluster add 4 failed"

# placement_shape: prints "SHARD:V,V,V ..." of the data shards and exits 0
# when every data shard has 3 voters, none joining, replica counts within
# one of each other and every node holding at least one.
placement_shape() {
	rmq cluster status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
data = [s for s in d["shards"] if s["id"] > 0]
out = " ".join("%d:%s" % (s["id"], ",".join(map(str, sorted(s["replicas"])))) for s in data)
print(out)
load = {n: 0 for n in (1, 2, 3, 4)}
for s in data:
    if len(s["replicas"]) != 3 or not s.get("leader"):
        sys.exit(1)
    for r in s["replicas"]:
        load[r] = load.get(r, 0) + 1
if max(load.values()) - min(load.values()) > 1 or min(load.values()) == 0:
    sys.exit(1)
'
}
shape=""
for ((i = 0; i < 90; i++)); do
	if shape=$(placement_shape 2>/dev/null); then
		break
	fi
	shape=""
	sleep 1
done
[[ -n $shape ]] || t_fail "replicas not balanced onto node 4: $(placement_shape 2>&1 || true)"
t_log "balanced: $shape"

# Pick a data shard, a node holding it and one that does not.
read -r shard from to < <(python3 -c '
import sys
for tok in sys.argv[1].split():
    s, reps = tok.split(":")
    reps = [int(r) for r in reps.split(",")]
    others = [n for n in (1, 2, 3, 4) if n not in reps]
    if others:
        print(s, reps[0], others[0]); break
' "$shape")
[[ -n ${to:-} ]] || t_fail "no shard with a node outside it in '$shape'"

# The node outside the shard knows its leader all the same.
outside_leader=$(RAFTMQ_SERVERS=$(t_client_addr "$to") rmq cluster status --json |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print([s for s in d["shards"] if s["id"]=='"$shard"'][0].get("leader") or 0)')
((outside_leader > 0)) || t_fail "node $to does not know who leads shard $shard"

t_log "moving shard $shard's replica from node $from to node $to"
out=$(rmq shard move "$shard" --from "$from" --to "$to" --wait --timeout 60) ||
	t_fail "shard move failed: $out"
t_log "$out"
reps=$(rmq cluster status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(",".join(map(str, sorted([s for s in d["shards"] if s["id"] == '"$shard"'][0]["replicas"]))))')
[[ ,$reps, == *",$to,"* && ,$reps, != *",$from,"* ]] ||
	t_fail "shard $shard replicas $reps after moving $from -> $to"
t_log "shard $shard replicas now $reps"
out=$(rmq shard move "$shard" --from "$from" --to "$to") ||
	t_fail "asking again failed: $out"
[[ $out == *"replica moved"* ]] || t_fail "asking again: $out"

# Back onto the node that held it before (a removed replica, not a demoted
# one: raft catches its old log up), then the middle node dies.
t_log "moving shard $shard's replica back from node $to to node $from"
out=$(rmq shard move "$shard" --from "$to" --to "$from" --wait --timeout 60) ||
	t_fail "moving back failed: $out"
t_log "$out"
t_log "killing node $to"
t_kill "$to"

t_workload_check
t_pass "$(tail -n 1 "$RAFTMQ_DIR/check.txt")"
