#!/usr/bin/env bash
# pytest wrapper: "no tests collected" (exit 5) is always a failure, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# The s3a storage-root test needs hadoop-aws + the AWS SDK and S3Proxy (cached after
# the first run; the embedded default never fetches them).
.venv/bin/riverdelta jars fetch --set s3 --set s3proxy || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "run_tests: ERROR: no tests ran for $* - that is a failure, not a pass" >&2
  exit 1
fi
exit $rc
