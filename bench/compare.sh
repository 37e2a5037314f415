#!/usr/bin/env bash
# Side-by-side benchmark: raftmq against RabbitMQ quorum queues and NATS
# JetStream (R3), each a three-node cluster on 127.0.0.1, all driven by the
# same raftmq-bench binary on this machine.
#
# Usage: bench/compare.sh [--quick] [--brokers LIST] [--scenarios LIST]
#                         [--out DIR] [--keep]
#
#   --quick          one short run per scenario (under 3 minutes in all);
#                    without it every scenario runs 3 times (median, range)
#   --brokers LIST   comma-separated subset of rabbitmq,nats,raftmq
#                    (default: all three, in that order)
#   --scenarios LIST comma-separated subset of a,b,c,d,e (default: all)
#   --out DIR        where the per-run JSON and the tables go (default
#                    results/compare-<UTC time>/ in the repository)
#   --keep           keep the brokers' data dirs and logs (temp dir)
#
# Scenarios (1 KiB bodies unless said otherwise):
#   a  1 producer, 1 consumer, 1 queue, window 1000
#   b  latency mode: window 1
#   c  4 producers + 4 consumers, 4 queues, window 1000 each
#   d  64 KiB bodies, window 100
#   e  backlog: publish 1,000,000 (100,000 with --quick) messages with no
#      consumer, then consume them all; the servers' max RSS is sampled
#
# Installs what it needs: scripts/deps.sh (build deps, incl. librabbitmq-dev
# and libnats-dev), then rabbitmq-server and nats-server with apt-get if
# missing. Builds raftmqd and raftmq-bench (no sanitizers) into
# $RAFTMQ_BENCH_BUILD (default build/). Every process it starts listens on
# 127.0.0.1 only and is stopped by pid on exit, whatever the exit.
#
# Ports: raftmq 27101-27303 (RAFTMQ_PORT_BASE 27100); RabbitMQ AMQP
# 25671-25673, distribution 25681-25683, CLI 25690-25699, epmd 24369;
# NATS clients 24221-24223, routes 24231-24233.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${RAFTMQ_BENCH_BUILD:-$REPO/build}
QUICK=0
BROKERS=rabbitmq,nats,raftmq
OUT=""
KEEP=0
SCENARIO_LIST=""

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit "${1:-2}"
}

while (($# > 0)); do
	case $1 in
	--quick) QUICK=1 ;;
	--brokers)
		BROKERS=${2:?--brokers needs a list}
		shift
		;;
	--scenarios)
		SCENARIO_LIST=${2:?--scenarios needs a list}
		shift
		;;
	--out)
		OUT=${2:?--out needs a directory}
		shift
		;;
	--keep) KEEP=1 ;;
	-h | --help) usage 0 ;;
	*)
		echo "compare: unknown argument '$1'" >&2
		usage
		;;
	esac
	shift
done
for b in ${BROKERS//,/ }; do
	case $b in
	rabbitmq | nats | raftmq) ;;
	*)
		echo "compare: unknown broker '$b'" >&2
		exit 2
		;;
	esac
done

if ((QUICK)); then
	REPEATS=1 DURATION=4 WARMUP=1 BACKLOG=100000
else
	REPEATS=3 DURATION=15 WARMUP=3 BACKLOG=1000000
fi
IFS=, read -r -a SCENARIOS <<<"${SCENARIO_LIST:-a,b,c,d,e}"
for s in "${SCENARIOS[@]}"; do
	[[ $s == [a-e] ]] || {
		echo "compare: unknown scenario '$s'" >&2
		exit 2
	}
done

say() { echo "[compare $(date -u +%T)] $*" >&2; }
die() {
	say "FAILED: $*"
	exit 1
}

# ---- Cleanup: every process we start is recorded here and stopped by pid.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/raftmq-compare.XXXXXX")
PIDS=()         # processes to stop (TERM, then KILL)
RAFTMQ_DIRS=()  # local-cluster.sh data dirs to stop

stop_pids() {
	local pid i alive
	for pid in ${PIDS[@]+"${PIDS[@]}"}; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for ((i = 0; i < 100; i++)); do
		alive=0
		for pid in ${PIDS[@]+"${PIDS[@]}"}; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done
		((alive)) || break
		sleep 0.1
	done
	for pid in ${PIDS[@]+"${PIDS[@]}"}; do
		kill -KILL "$pid" 2>/dev/null || true
	done
	PIDS=()
}

cleanup() {
	local rc=$? d
	trap - EXIT INT TERM
	for d in ${RAFTMQ_DIRS[@]+"${RAFTMQ_DIRS[@]}"}; do
		RAFTMQ_DIR=$d RAFTMQ_BIN=$BUILD/bin "$REPO/deploy/local-cluster.sh" stop \
			>/dev/null 2>&1 || true
	done
	stop_pids
	if ((KEEP)) || ((rc != 0)); then
		say "broker data and logs kept in $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- Dependencies and build -------------------------------------------------

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) for: $*"
	fi
}

install_peers() {
	local missing=() p
	command -v rabbitmq-server >/dev/null 2>&1 ||
		[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
	command -v nats-server >/dev/null 2>&1 ||
		[[ -x /usr/sbin/nats-server ]] || missing+=(nats-server)
	((${#missing[@]} == 0)) && return 0
	say "installing ${missing[*]} (apt-get)"
	# Debian starts a system-wide rabbitmq-server on install where it can;
	# policy-rc.d 101 (if absent) keeps it from starting: we run our own.
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -q >/dev/null
	as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	for p in "${missing[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			die "could not install $p"
	done
}

say "dependencies: scripts/deps.sh"
"$REPO/scripts/deps.sh" >&2
install_peers
RABBIT_BIN=/usr/lib/rabbitmq/bin
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)

say "building raftmqd, raftmq and raftmq-bench in $BUILD (no sanitizers)"
if [[ -f $BUILD/CMakeCache.txt ]] &&
	grep -q '^RAFTMQ_SANITIZE:BOOL=ON' "$BUILD/CMakeCache.txt"; then
	die "$BUILD is a sanitizer build; set RAFTMQ_BENCH_BUILD to another dir"
fi
cmake -S "$REPO" -B "$BUILD" -DRAFTMQ_SANITIZE=OFF >"$WORK/cmake.log" 2>&1 ||
	{ tail -n 20 "$WORK/cmake.log" >&2; die "cmake configure"; }
cmake --build "$BUILD" -j"$(nproc)" --target raftmqd raftmq raftmq-bench \
	>"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; die "build"; }
BENCH=$BUILD/bin/raftmq-bench
help=$("$BENCH" --help)
for b in ${BROKERS//,/ }; do
	grep -q "built in:.*\b$b\b" <<<"$help" ||
		die "raftmq-bench was built without the $b backend (its -dev package missing?)"
done

if [[ -z $OUT ]]; then
	OUT=$REPO/results/compare-$(date -u +%Y%m%dT%H%M%SZ)
fi
mkdir -p "$OUT"

# ---- RabbitMQ: three nodes, clustered ---------------------------------------
#
# Run as whoever we are (root is fine when calling the scripts under
# /usr/lib/rabbitmq/bin directly; the /usr/sbin wrappers would su to the
# rabbitmq user and use /var/lib/rabbitmq). Our own epmd on its own port,
# our own HOME (so our own Erlang cookie), no /etc/rabbitmq env file, no
# plugins, schedulers not bound to cores (three nodes share two).

RB_EPMD_PORT=24369

rabbit_env() {
	local n=$1
	env HOME="$WORK/rabbit/home" \
		ERL_EPMD_PORT=$RB_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
		RABBITMQ_CONF_ENV_FILE="$WORK/rabbit/env.conf" \
		RABBITMQ_NODENAME="rabbit$n@localhost" \
		RABBITMQ_USE_LONGNAME=false \
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
		RABBITMQ_NODE_PORT=$((25670 + n)) \
		RABBITMQ_DIST_PORT=$((25680 + n)) \
		RABBITMQ_CTL_DIST_PORT_MIN=25690 RABBITMQ_CTL_DIST_PORT_MAX=25699 \
		RABBITMQ_MNESIA_BASE="$WORK/rabbit/mnesia" \
		RABBITMQ_LOG_BASE="$WORK/rabbit/log" \
		RABBITMQ_CONFIG_FILE="$WORK/rabbit/rabbit$n.conf" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rabbit/enabled_plugins" \
		RABBITMQ_PID_FILE="$WORK/rabbit/rabbit$n.pid" \
		RABBITMQ_SCHEDULER_BIND_TYPE=u \
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
		"${@:2}"
}

rabbitmqctl_n() {
	local n=$1
	shift
	rabbit_env "$n" timeout 120 "$RABBIT_BIN/rabbitmqctl" -n "rabbit$n@localhost" "$@"
}

RB_BEAM=() # beam.smp pids, for RSS

start_rabbitmq() {
	local n pid
	mkdir -p "$WORK/rabbit/home" "$WORK/rabbit/log"
	printf 'BENCHCOOKIE%s' "$RANDOM$RANDOM" >"$WORK/rabbit/home/.erlang.cookie"
	chmod 400 "$WORK/rabbit/home/.erlang.cookie"
	: >"$WORK/rabbit/env.conf"
	echo '[].' >"$WORK/rabbit/enabled_plugins"
	epmd -port "$RB_EPMD_PORT" -address 127.0.0.1 >"$WORK/rabbit/epmd.log" 2>&1 &
	PIDS+=($!)
	sleep 0.3
	for n in 1 2 3; do
		cat >"$WORK/rabbit/rabbit$n.conf" <<-EOF
			listeners.tcp.1 = 127.0.0.1:$((25670 + n))
			loopback_users.guest = true
			log.file.level = warning
		EOF
		rabbit_env "$n" "$RABBIT_BIN/rabbitmq-server" \
			>"$WORK/rabbit/rabbit$n.out" 2>&1 &
		PIDS+=($!)
	done
	# await_startup fails at once while the node is not yet known to epmd.
	local deadline=$((SECONDS + 120))
	for n in 1 2 3; do
		until rabbitmqctl_n "$n" await_startup --timeout 60 \
			>>"$WORK/rabbit/ctl.log" 2>&1; do
			if ((SECONDS >= deadline)); then
				tail -n 20 "$WORK/rabbit/rabbit$n.out" >&2
				return 1
			fi
			sleep 1
		done
		pid=$(cat "$WORK/rabbit/rabbit$n.pid")
		PIDS+=("$pid")
		RB_BEAM+=("$pid")
	done
	for n in 2 3; do
		if ! { rabbitmqctl_n "$n" stop_app >/dev/null &&
			rabbitmqctl_n "$n" join_cluster rabbit1@localhost >/dev/null &&
			rabbitmqctl_n "$n" start_app >/dev/null; }; then
			say "rabbit$n could not join the cluster"
			return 1
		fi
	done
	local running
	running=$(rabbitmqctl_n 1 cluster_status --formatter json |
		python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))')
	[[ $running == 3 ]] || { say "RabbitMQ cluster has $running running nodes"; return 1; }
	RB_VERSION=$(rabbitmqctl_n 1 version 2>/dev/null | tail -n 1)
	say "RabbitMQ $RB_VERSION: 3 nodes clustered (AMQP 127.0.0.1:25671-25673)"
}

stop_rabbitmq() {
	local n
	for n in 1 2 3; do
		rabbitmqctl_n "$n" stop >/dev/null 2>&1 || true
	done
	stop_pids
}

# ---- NATS: three servers with JetStream, one cluster ------------------------

start_nats() {
	local n m routes
	mkdir -p "$WORK/nats"
	for n in 1 2 3; do
		routes=""
		for m in 1 2 3; do
			((m == n)) || routes+="    nats-route://127.0.0.1:$((24230 + m))"$'\n'
		done
		cat >"$WORK/nats/n$n.conf" <<-EOF
			server_name: n$n
			listen: 127.0.0.1:$((24220 + n))
			jetstream {
			  store_dir: "$WORK/nats/store$n"
			}
			cluster {
			  name: bench
			  listen: 127.0.0.1:$((24230 + n))
			  routes: [
			$routes  ]
			}
		EOF
		"$NATS_SERVER" -c "$WORK/nats/n$n.conf" >"$WORK/nats/n$n.log" 2>&1 &
		PIDS+=($!)
		NATS_PIDS+=($!)
	done
	NATS_VERSION=$("$NATS_SERVER" --version | awk '{print $2}')
	# raftmq-bench retries stream creation until the JetStream meta
	# leader is elected; here we only wait for the client ports.
	for n in 1 2 3; do
		for ((m = 0; m < 100; m++)); do
			(exec 3<>"/dev/tcp/127.0.0.1/$((24220 + n))") 2>/dev/null && break
			sleep 0.1
		done
	done
	say "NATS $NATS_VERSION: 3 servers, JetStream (clients 127.0.0.1:24221-24223)"
}

# ---- raftmq: deploy/local-cluster.sh ----------------------------------------

RQ_BASE=27100
start_raftmq() {
	export RAFTMQ_DIR=$WORK/raftmq RAFTMQ_PORT_BASE=$RQ_BASE RAFTMQ_BIN=$BUILD/bin
	export RAFTMQ_LOG_LEVEL=warn
	RAFTMQ_DIRS+=("$RAFTMQ_DIR")
	"$REPO/deploy/local-cluster.sh" start >&2 || return 1
	RQ_PIDS=()
	local n
	for n in 1 2 3; do
		RQ_PIDS+=("$(cat "$RAFTMQ_DIR/node$n.pid")")
	done
	say "raftmq $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'): 3 nodes (clients 127.0.0.1:27101-27103)"
}

stop_raftmq() {
	"$REPO/deploy/local-cluster.sh" stop >/dev/null 2>&1 || true
}

# ---- Scenarios ------------------------------------------------------------------

scenario_args() {
	case $1 in
	a) echo "--producers 1 --consumers 1 --queues 1 --size 1024 --window 1000 --duration $DURATION --warmup $WARMUP --drain 3" ;;
	b) echo "--producers 1 --consumers 1 --queues 1 --size 1024 --window 1 --duration $DURATION --warmup $WARMUP --drain 3" ;;
	c) echo "--producers 4 --consumers 4 --queues 4 --size 1024 --window 1000 --duration $DURATION --warmup $WARMUP --drain 3" ;;
	d) echo "--producers 1 --consumers 1 --queues 1 --size 65536 --window 100 --duration $DURATION --warmup $WARMUP --drain 3" ;;
	e) echo "--producers 1 --consumers 1 --queues 1 --size 1024 --window 1000 --preload $BACKLOG --drain 20" ;;
	esac
}

# run_scenarios BROKER SERVERS PIDS(comma)
run_scenarios() {
	local broker=$1 servers=$2 pids=$3 s r f args
	for s in "${SCENARIOS[@]}"; do
		for ((r = 1; r <= REPEATS; r++)); do
			f=$OUT/$broker-$s-$r.json
			# shellcheck disable=SC2207
			args=($(scenario_args "$s"))
			if ! timeout --kill-after=10 900 "$BENCH" --broker "$broker" \
				--servers "$servers" --server-pids "$pids" \
				--queue-prefix "cmp$s$r" --json --no-progress "${args[@]}" \
				>"$f" 2>"$OUT/$broker-$s-$r.err"; then
				say "$broker $s#$r: raftmq-bench failed: $(tail -n 3 "$OUT/$broker-$s-$r.err" | tr '\n' ' ')"
				rm -f "$f"
				continue
			fi
			say "$broker $s#$r: $(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
p, c = d["publish"], d["consume"]
lat = p.get("confirm_latency_us") or {}
print("pub %.0f msg/s p50 %s p99 %s us | con %.0f msg/s | errors %d | rss max %s KiB"
      % (p["msgs_per_s"], lat.get("p50"), lat.get("p99"), c["msgs_per_s"],
         d["errors"], d.get("server_rss_max_kib")))' "$f")"
		done
	done
}

# ---- Main -------------------------------------------------------------------------

{
	echo "date: $(date -u +%FT%TZ)"
	echo "command: bench/compare.sh $([[ $QUICK == 1 ]] && echo --quick) --brokers $BROKERS"
	echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with local changes)')"
	echo "nproc: $(nproc)"
	echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "disk: $(df -h "$WORK" | awk 'NR==2 {print $1" ("$2", "$5" used)"}')"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "kernel: $(uname -r)"
	echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

say "writing results to $OUT"
START=$SECONDS
NATS_PIDS=()
RB_VERSION="" NATS_VERSION=""
for b in ${BROKERS//,/ }; do
	case $b in
	rabbitmq)
		if start_rabbitmq; then
			run_scenarios rabbitmq "127.0.0.1:25671,127.0.0.1:25672,127.0.0.1:25673" \
				"$(IFS=,; echo "${RB_BEAM[*]}")"
		else
			say "RabbitMQ did not start; its logs: $WORK/rabbit"
			KEEP=1
		fi
		stop_rabbitmq
		;;
	nats)
		start_nats
		run_scenarios nats "nats://127.0.0.1:24221,nats://127.0.0.1:24222,nats://127.0.0.1:24223" \
			"$(IFS=,; echo "${NATS_PIDS[*]}")"
		stop_pids
		;;
	raftmq)
		if start_raftmq; then
			run_scenarios raftmq "127.0.0.1:27101,127.0.0.1:27102,127.0.0.1:27103" \
				"$(IFS=,; echo "${RQ_PIDS[*]}")"
		else
			say "raftmq did not start; its logs: $WORK/raftmq"
			KEEP=1
		fi
		stop_raftmq
		;;
	esac
done
{
	echo "rabbitmq_version: ${RB_VERSION:-?}"
	echo "nats_version: ${NATS_VERSION:-?}"
	echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "seconds: $((SECONDS - START))"
} >>"$OUT/machine.txt"

python3 "$REPO/bench/compare_table.py" "$OUT" | tee "$OUT/table.txt"
say "done in $((SECONDS - START)) s; results in $OUT"
