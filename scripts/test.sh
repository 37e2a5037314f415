#!/usr/bin/env bash
# README command 2 (and .ci/run): install dependencies, build with ASan +
# UBSan and -Werror into build-test/, run the whole ctest suite (unit,
# integration and real-process cluster tests), then check formatting.
# Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DRAFTMQ_SANITIZE=ON -DRAFTMQ_WERROR=ON
cmake --build build-test -j"$(nproc)"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
ctest --test-dir build-test --output-on-failure -j2 || status=$?
scripts/check-format.sh || status=$?

if ((status != 0)); then
	echo "test.sh: FAILED" >&2
	exit "$status"
fi
echo "test.sh: all tests passed"
