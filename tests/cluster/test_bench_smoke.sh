#!/usr/bin/env bash
# raftmq-bench against a real three-node cluster, about 10 s of load:
#  1. a duration run (2 producers, 2 consumers, 2 queues): confirms and
#     deliveries at a non-zero rate, no errors, ordered latency
#     percentiles, everything confirmed consumed (at least once: a
#     leadership hand-off may redeliver), the nodes' RSS sampled;
#  2. a count run (4 KiB, window 50): exactly N confirmed, all consumed;
#  3. a preload run: the backlog is consumed in full;
#  4. every bench queue is deleted afterwards.
# Each run uses its own queue names: deleting a queue and declaring it
# again at once can make publishes fail with "not found" (a raftmq race,
# reported separately), which is not what this test is about.
#
# Usage: test_bench_smoke.sh BUILD_BIN_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
t_init bench_smoke 18600 "${1:-}"

BENCH=$RAFTMQ_BIN/raftmq-bench
[[ -x $BENCH ]] || t_fail "raftmq-bench not built in $RAFTMQ_BIN"
t_start
pids=$(cat "$RAFTMQ_DIR"/node1.pid "$RAFTMQ_DIR"/node2.pid \
	"$RAFTMQ_DIR"/node3.pid | paste -sd,)

bench() {
	timeout --kill-after=5 120 "$BENCH" --servers "$SERVERS" --json \
		--no-progress --server-pids "$pids" "$@"
}

# check FILE PYTHON_CONDITIONS...: each condition (over d = the JSON) must
# hold; prints the failing ones.
check() {
	python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
pub, con = d["publish"], d["consume"]
bad = [c for c in sys.argv[2:] if not eval(c)]
for c in bad:
    print("failed: " + c)
print("pub %.0f msg/s confirmed %d, con %.0f msg/s consumed %d, errors %d"
      % (pub["msgs_per_s"], pub["confirmed"], con["msgs_per_s"],
         con["consumed"], d["errors"]))
sys.exit(1 if bad else 0)
PY
}

bench --producers 2 --consumers 2 --queues 2 --duration 4 --warmup 1 \
	--queue-prefix smoke-dur \
	>"$RAFTMQ_DIR/duration.json" 2>"$RAFTMQ_DIR/duration.err" ||
	t_fail "duration run: $(tail -n 3 "$RAFTMQ_DIR/duration.err")"
out=$(check "$RAFTMQ_DIR/duration.json" \
	'd["broker"] == "raftmq" and d["params"]["producers"] == 2' \
	'd["errors"] == 0' \
	'pub["msgs_per_s"] > 0 and pub["measured"] > 0' \
	'con["msgs_per_s"] > 0 and con["measured"] > 0' \
	'con["consumed"] >= pub["confirmed"]' \
	'0 <= (l := pub["confirm_latency_us"])["p50"] <= l["p90"] <= l["p99"] <= l["p999"] <= l["max"]' \
	'(l := con["e2e_latency_us"])["p50"] <= l["p99"] <= l["max"]' \
	'pub["confirm_latency_us"]["count"] == pub["measured"]' \
	'len(d["server_rss"]) == 3 and d["server_rss_max_kib"] > 0') ||
	t_fail "duration run: $out"
t_log "ok: duration run ($out)"

bench --count 3000 --size 4096 --window 50 --queue-prefix smoke-count \
	>"$RAFTMQ_DIR/count.json" 2>"$RAFTMQ_DIR/count.err" ||
	t_fail "count run: $(tail -n 3 "$RAFTMQ_DIR/count.err")"
out=$(check "$RAFTMQ_DIR/count.json" \
	'd["errors"] == 0' 'pub["confirmed"] == 3000' 'con["consumed"] >= 3000' \
	'abs(pub["mb_per_s"] - pub["msgs_per_s"] * 4096 / 1e6) < 0.01') ||
	t_fail "count run: $out"
t_log "ok: count run ($out)"

bench --preload 5000 --consumers 1 --queue-prefix smoke-pre \
	>"$RAFTMQ_DIR/preload.json" 2>"$RAFTMQ_DIR/preload.err" ||
	t_fail "preload run: $(tail -n 3 "$RAFTMQ_DIR/preload.err")"
out=$(check "$RAFTMQ_DIR/preload.json" \
	'd["errors"] == 0' 'pub["confirmed"] == 5000' 'con["consumed"] >= 5000' \
	'con["msgs_per_s"] > 0' 'con["e2e_latency_us"] is None') ||
	t_fail "preload run: $out"
t_log "ok: preload run ($out)"

left=$(rmq queue list --json | python3 -c '
import json, sys
print(" ".join(q["name"] for q in json.load(sys.stdin) if q["name"].startswith("smoke-")))')
[[ -z $left ]] || t_fail "bench queues left behind: $left"
t_pass "duration, count and preload runs clean; queues deleted"
