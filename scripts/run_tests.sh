#!/usr/bin/env bash
# pytest wrapper: "no tests collected" (exit 5) is a failure unless --allow-empty.
set -uo pipefail
cd "$(dirname "$0")/.."
allow_empty=0
args=()
for a in "$@"; do
  if [ "$a" = "--allow-empty" ]; then allow_empty=1; else args+=("$a"); fi
done
.venv/bin/python -m pytest "${args[@]}"
rc=$?
if [ $rc -eq 5 ]; then
  if [ $allow_empty -eq 1 ]; then echo "run_tests: no tests selected by ${args[*]}"; exit 0; fi
  echo "run_tests: ERROR: no tests ran for ${args[*]} - that is a failure, not a pass" >&2
  exit 1
fi
exit $rc
