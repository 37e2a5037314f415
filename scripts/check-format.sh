#!/usr/bin/env bash
# Check that every C source and header follows .clang-format.
# Usage: scripts/check-format.sh [--fix]
#   --fix  rewrite the files in place instead of checking.
# Exits 1 and lists the offending files if any would change.
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
DIRS=(proto store consensus server client bench tests)

fix=0
if [[ ${1:-} == --fix ]]; then
	fix=1
fi

existing=()
for d in "${DIRS[@]}"; do
	[[ -d $d ]] && existing+=("$d")
done
files=()
if ((${#existing[@]} > 0)); then
	while IFS= read -r -d '' f; do
		files+=("$f")
	done < <(find "${existing[@]}" \
		\( -name 'build*' -o -name '.local-cluster' -o -name 'gen' \) -prune -o \
		-type f \( -name '*.c' -o -name '*.h' \) -print0 | sort -z)
fi

if ((${#files[@]} == 0)); then
	echo "check-format.sh: no C files"
	exit 0
fi

if ((fix)); then
	"$CLANG_FORMAT" -i "${files[@]}"
	echo "check-format.sh: formatted ${#files[@]} files"
	exit 0
fi

bad=()
for f in "${files[@]}"; do
	if ! "$CLANG_FORMAT" --dry-run --Werror "$f" >/dev/null 2>&1; then
		bad+=("$f")
	fi
done
if ((${#bad[@]} > 0)); then
	echo "check-format.sh: ${#bad[@]} of ${#files[@]} files need clang-format:" >&2
	printf '  %s\n' "${bad[@]}" >&2
	echo "check-format.sh: run scripts/check-format.sh --fix" >&2
	exit 1
fi
echo "check-format.sh: ${#files[@]} files formatted"
