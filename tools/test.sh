#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine (as root): installs what is missing, checks formatting, lint
# and types, then runs every test against a private containerd the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export PATH="$PWD/.tools/node_modules/.bin:$PATH"
deno task check
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
deno task test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Deno's summary is "ok | N passed | M failed (…)"; CI reads the plain form.
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1)
passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
echo "${passed} passed, ${failed} failed"
exit "$status"
