#!/usr/bin/env bash
# Install the Debian 12 packages raftmq needs to build, test and run.
#
# Checks each package with dpkg-query; when some are missing, runs
# `apt-get update` once and `apt-get install -y --no-install-recommends`
# for just those (as root, or through sudo). Quick and silent-ish when
# everything is already installed. Safe to run any number of times.
set -euo pipefail

PACKAGES=(
	build-essential cmake pkg-config
	libraft-dev libuv1-dev liblmdb-dev
	libprotobuf-c-dev protobuf-c-compiler
	libcmocka-dev libinih-dev libcjson-dev libmicrohttpd-dev libssl-dev
	libsystemd-dev
	python3 procps lmdb-utils clang-format
	nftables fiu-utils libfiu-dev e2fsprogs util-linux
	librabbitmq-dev libnats-dev
)

installed() {
	local status
	status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
	[[ $status == "install ok installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "deps.sh: dpkg-query not found; this script supports Debian 12 only." >&2
	echo "deps.sh: install by hand: ${PACKAGES[*]}" >&2
	exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
	echo "deps.sh: all ${#PACKAGES[@]} packages present"
	exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1; then
	as_root=(sudo)
else
	echo "deps.sh: missing packages: ${missing[*]}" >&2
	echo "deps.sh: not root and no sudo; install them as root:" >&2
	echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

echo "deps.sh: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do
	installed "$p" || still+=("$p")
done
if ((${#still[@]} > 0)); then
	echo "deps.sh: still missing after install: ${still[*]}" >&2
	exit 1
fi
echo "deps.sh: installed ${#missing[@]} package(s)"
