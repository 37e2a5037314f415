#!/usr/bin/env bash
# README command 1: install dependencies, build into build/, start a local
# three-node cluster (deploy/local-cluster.sh) and print its status.
#
# Environment: RAFTMQ_DIR, RAFTMQ_PORT_BASE as for deploy/local-cluster.sh.
# RAFTMQ_BIN is fixed to build/bin here, the tree this script builds.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"

export RAFTMQ_BIN="$PWD/build/bin"
deploy/local-cluster.sh start

servers=""
base=${RAFTMQ_PORT_BASE:-7100}
for n in 1 2 3; do
	servers+="${servers:+,}127.0.0.1:$((base + n))"
done
build/bin/raftmq --servers "$servers" cluster status
echo
echo "admin HTTP: http://127.0.0.1:$((base + 201))/metrics (/readyz, /api/cluster, ...; nodes 2, 3 on +202, +203)"
