#!/usr/bin/env bash
# Acceptance (issue 6): the admin HTTP API of a three-node cluster.
#
#  1. /healthz, /readyz, /api/cluster, /api/nodes, /api/queues answer on
#     every node with what the node knows; unknown paths are 404, POST 405.
#  2. /metrics is scraped and parsed strictly (tests/cluster/prom.py) on
#     every node before and after messages flow; the counters move by at
#     least the traffic the test made (publishes, confirms, deliveries,
#     acks, client bytes), the queue gauges of the queue's leader match its
#     content, and the raft latency histograms count entries.
#  3. /readyz is not 200 on a node that is catching up: node 3 is killed,
#     the others commit >= 2000 entries (batch_max_messages = 10), node 3 is
#     restarted while a prober polls its /readyz every 10 ms. The first
#     answer must be non-200 (its loop answers before any catch-up can have
#     completed), and no 200 may come while any shard of node 3 is more than
#     ready_max_lag entries behind the commit index its leader had before
#     the restart (checked on the state printed in the 200 answer itself).
#     Eventually /readyz is 200.
#
# Usage: test_http.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init http 24400 "${1:-}"

PROM=$T_LIB_DIR/prom.py
LAG=5
export RAFTMQ_EXTRA_CONFIG="[node]\nready_max_lag = $LAG\n[server]\nbatch_max_messages = 10\n[raft]\nsnapshot_threshold = 1000000"
http() { echo "http://127.0.0.1:$((RAFTMQ_PORT_BASE + 200 + $1))"; }

t_start

# ---- 1. health, readiness and the JSON API -----------------------------
python3 - "$(http 1)" "$(http 2)" "$(http 3)" <<'PY' || t_fail "JSON API checks"
import json, sys, time, urllib.request, urllib.error

def get(url, data=None):
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()

for i, base in enumerate(sys.argv[1:], 1):
    code, _, body = get(base + "/healthz")
    assert (code, body) == (200, "ok\n"), ("healthz", i, code, body)
    # Every node is up and has leaders (local-cluster.sh start waited);
    # followers may still be applying the last entries.
    for _ in range(100):
        code, _, body = get(base + "/readyz")
        if code == 200:
            break
        time.sleep(0.1)
    assert code == 200 and body.startswith("ready\n"), ("readyz", i, code, body)
    code, ctype, body = get(base + "/api/cluster")
    assert code == 200 and ctype == "application/json", ("cluster", i, code, ctype)
    c = json.loads(body)
    assert c["node_id"] == i and c["cluster_name"] == "local" and c["ready"] is True, c
    assert [s["id"] for s in c["shards"]] == [0, 1, 2, 3], c["shards"]
    for s in c["shards"]:
        assert s["leader"] in (1, 2, 3) and sorted(s["replicas"]) == [1, 2, 3], s
        assert s["role"] in ("follower", "leader_pending", "leader"), s
        assert s["applied_index"] <= s["leader_commit_index"] or s["role"] != "follower", s
    code, _, body = get(base + "/api/nodes")
    nodes = json.loads(body)
    assert code == 200 and len(nodes) == 3, nodes
    assert [n["id"] for n in nodes if n["self"]] == [i], nodes
    code, _, body = get(base + "/api/queues")
    assert code == 200 and isinstance(json.loads(body), list), body
    code, _, _ = get(base + "/nope")
    assert code == 404, ("404", code)
    code, _, _ = get(base + "/metrics", data=b"x")
    assert code == 405, ("POST", code)
print("ok: healthz, readyz, /api/* on 3 nodes; 404 and 405")
PY
t_log "ok: /healthz, /readyz and the JSON API answer on every node"

# ---- 2. /metrics moves with traffic -------------------------------------
scrape_all() { # OUT_FILE: one JSON object per node
	python3 - "$1" "$(http 1)" "$(http 2)" "$(http 3)" <<PY || t_fail "scrape failed"
import json, sys
sys.path.insert(0, "$T_LIB_DIR")
import prom
out = []
for base in sys.argv[2:]:
    s = prom.scrape(base + "/metrics")
    out.append([[n, list(map(list, l)), v] for (n, l), v in s.items()])
json.dump(out, open(sys.argv[1], "w"))
PY
}
scrape_all "$RAFTMQ_DIR/before.json"

Q=hq
N=500
C=200
SIZE=100
rmq queue declare "$Q" >/dev/null
rmq publish "$Q" --count "$N" --size "$SIZE" --window 50 >"$RAFTMQ_DIR/pub.out" ||
	t_fail "publish failed: $(t_last_line "$RAFTMQ_DIR/pub.out")"
rmq consume "$Q" --count "$C" --idle-timeout 10 >/dev/null 2>"$RAFTMQ_DIR/con.err" ||
	t_fail "consume failed: $(t_last_line "$RAFTMQ_DIR/con.err")"
leader=$(t_wait_queue_leader "$Q") || t_fail "no leader for $Q"
shard=$(rmq queue list --json | python3 -c '
import json, sys
print([q for q in json.load(sys.stdin) if q["name"] == sys.argv[1]][0]["shard"])' "$Q")
t_log "queue $Q: shard $shard, leader node $leader; published $N, consumed $C"

# Acks are applied after the consumer is answered: poll until the queue's
# gauges settle, then compare.
ok=""
for _ in $(seq 1 50); do
	# Leaders may move meanwhile (rebalancing, elections on a loaded
	# machine): only the current leader reports the queue.
	leader=$(t_wait_queue_leader "$Q") || t_fail "no leader for $Q"
	scrape_all "$RAFTMQ_DIR/after.json"
	if python3 - "$RAFTMQ_DIR/before.json" "$RAFTMQ_DIR/after.json" \
		"$Q" "$shard" "$leader" "$N" "$C" "$SIZE" >"$RAFTMQ_DIR/check.out" 2>&1 <<'PY'; then
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
q, shard, leader = sys.argv[3], sys.argv[4], int(sys.argv[5])
n, c, size = map(int, sys.argv[6:9])

def series(node):
    return {(name, tuple(map(tuple, labels))): v for name, labels, v in node}

B = [series(x) for x in before]
A = [series(x) for x in after]

def tot(nodes, name, **lab):
    s = 0
    for d in nodes:
        for (nm, l), v in d.items():
            dl = dict(l)
            if nm == name and all(dl.get(k) == w for k, w in lab.items()):
                s += v
    return s

def delta(name, **lab):
    return tot(A, name, **lab) - tot(B, name, **lab)

problems = []
def want(cond, what):
    if not cond:
        problems.append(what)

for name, least in [("raftmq_publishes_total", n), ("raftmq_publish_confirms_total", n),
                    ("raftmq_deliveries_total", c), ("raftmq_acks_total", c),
                    ("raftmq_client_received_bytes_total", n * size),
                    ("raftmq_client_sent_bytes_total", c * size),
                    ("raftmq_client_connections_accepted_total", 2)]:
    d = delta(name)
    want(d >= least, "%s moved by %d, want >= %d" % (name, d, least))
    print("%s +%d (>= %d)" % (name, d, least))
# Only the leader of the queue's shard reports the queue.
reporters = [i + 1 for i, d in enumerate(A) if any(k[0] == "raftmq_queue_ready" and dict(k[1]).get("queue") == q for k in d)]
want(reporters == [leader], "raftmq_queue_ready{queue=%s} reported by %s, want [%d]" % (q, reporters, leader))
L = A[leader - 1]
ready = L.get(("raftmq_queue_ready", (("queue", q), ("shard", shard))))
unacked = L.get(("raftmq_queue_unacked", (("queue", q), ("shard", shard))))
msgs = L.get(("raftmq_queue_messages", (("queue", q), ("shard", shard))))
want((ready, unacked, msgs) == (n - c, 0, n - c),
     "leader's queue gauges ready/unacked/messages = %s/%s/%s, want %d/0/%d" % (ready, unacked, msgs, n - c, n - c))
print("queue %s on node %d: ready=%s unacked=%s messages=%s" % (q, leader, ready, unacked, msgs))
# The leaders counted the entries they proposed (the one that took the
# publishes may have handed the shard over since); every replica timed
# applies.
d = delta("raftmq_raft_append_seconds_count", shard=shard)
want(d >= 1, "append histogram of shard %s on the leaders moved by %d" % (shard, d))
for i in range(3):
    d = tot([A[i]], "raftmq_raft_apply_seconds_count", shard=shard) - tot([B[i]], "raftmq_raft_apply_seconds_count", shard=shard)
    want(d >= 1, "apply histogram of shard %s on node %d moved by %d" % (shard, i + 1, d))
    ap = A[i].get(("raftmq_shard_applied_index", (("shard", shard),)), 0) - B[i].get(("raftmq_shard_applied_index", (("shard", shard),)), 0)
    want(ap >= 1, "applied index of shard %s on node %d moved by %d" % (shard, i + 1, ap))
    want(A[i].get(("raftmq_disk_free_bytes", ()), 0) > 0, "no disk free bytes on node %d" % (i + 1))
    want(A[i].get(("raftmq_lmdb_map_used_bytes", (("shard", shard),)), 0) > 0, "no LMDB use on node %d" % (i + 1))
    want(A[i].get(("raftmq_ready", ()), 0) == 1, "raftmq_ready != 1 on node %d" % (i + 1))
want(tot(A, "raftmq_shard_role", role="leader", shard=shard) == 1, "not exactly one leader of shard %s" % shard)
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
		ok=yes
		break
	fi
	sleep 0.2
done
cat "$RAFTMQ_DIR/check.out" >&2
[[ -n $ok ]] || t_fail "metrics did not move as expected"
t_log "ok: /metrics parses on every node and moved with the traffic"

# ---- 3. /readyz while catching up ---------------------------------------
t_kill 3
rmq publish "$Q" --count 20000 --size 100 --window 1000 --prefix R \
	>"$RAFTMQ_DIR/pub2.out" ||
	t_fail "publish with node 3 down failed: $(t_last_line "$RAFTMQ_DIR/pub2.out")"
# What the cluster had committed: node 3 is behind by at least this much.
python3 - "$(http 1)" "$(http 2)" >"$RAFTMQ_DIR/commit.json" <<PY || t_fail "scrape failed"
import json, sys
sys.path.insert(0, "$T_LIB_DIR")
import prom
commit = {}
for base in sys.argv[1:]:
    s = prom.scrape(base + "/metrics")
    for (n, l), v in s.items():
        if n == "raftmq_shard_leader_commit_index":
            sh = dict(l)["shard"]
            commit[sh] = max(commit.get(sh, 0), int(v))
print(json.dumps(commit))
PY
t_log "commit index per shard with node 3 down: $(cat "$RAFTMQ_DIR/commit.json")"

python3 - "$(http 3)/readyz" "$RAFTMQ_DIR/probe.log" "$RAFTMQ_DIR/probe.started" <<'PY' &
import sys, time, urllib.request, urllib.error
url, log, started = sys.argv[1:4]
out = open(log, "w")
open(started, "w").close()
t0 = time.time()
while time.time() - t0 < 120:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            code, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read().decode()
    except OSError:
        time.sleep(0.01)
        continue
    out.write("%.3f %d %s\n" % (time.time() - t0, code, body.replace("\n", " | ")))
    out.flush()
    if code == 200:
        break
    time.sleep(0.01)
PY
prober=$!
T_EXTRA_PIDS+=("$prober")
for _ in $(seq 1 100); do
	[[ -f $RAFTMQ_DIR/probe.started ]] && break
	sleep 0.1
done
t_restart 3 >/dev/null
wait "$prober" || t_fail "prober failed"
python3 - "$RAFTMQ_DIR/probe.log" "$RAFTMQ_DIR/commit.json" "$LAG" <<'PY' || t_fail "readiness checks"
import json, re, sys
lines = [l.rstrip("\n") for l in open(sys.argv[1])]
commit = json.load(open(sys.argv[2]))
lag = int(sys.argv[3])
assert lines, "no answer from node 3's /readyz"
first = lines[0].split(" ", 2)
assert first[1] != "200", "first /readyz answer after the restart was 200: %s" % lines[0]
reasons = {}
for l in lines:
    t, code, body = l.split(" ", 2)
    if code != "200":
        key = re.sub(r"\d+", "N", body.split(" | ")[0])
        reasons[key] = reasons.get(key, 0) + 1
        continue
    for sh, c in commit.items():
        m = re.search(r"shard %s: role \w+, leader \d+, applied (\d+), leader commit (\d+)" % sh, body)
        assert m, "no state of shard %s in %s" % (sh, body)
        applied = int(m.group(1))
        assert applied + lag >= c, "200 while shard %s applied %d < %d - %d: %s" % (sh, applied, c, lag, l)
last = lines[-1].split(" ", 2)
assert last[1] == "200", "never ready: %s" % lines[-1]
print("readyz answers after the restart: %d not ready, then 200 at %ss" % (len(lines) - 1, last[0]))
for k, v in sorted(reasons.items()):
    print("  %4d x %s" % (v, k))
PY
t_log "ok: /readyz was not 200 until node 3 had caught up"
t_pass
