#!/usr/bin/env bash
# Idempotent environment set-up: Java check, virtualenv with the locked Python
# set, then the JVM jars from Maven Central into the project cache.
# A second run with an unchanged lock and a verified jar cache touches no network.
# `--test` adds what only the tests need (requirements-test.lock, and the Debian
# docker-compose and chromium through scripts/test_tools.sh); `make demo` skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_TOOLS=0
[ "${1:-}" = "--test" ] && TEST_TOOLS=1

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
UV_VERSION=0.9.30

die() { echo "setup: $*" >&2; exit 1; }

# --- Java 17 -----------------------------------------------------------------
if ! command -v java >/dev/null 2>&1; then
  die "Java not found. Riverdelta needs OpenJDK 17 (Spark 4 and Kafka 4 run on it).
       Install it (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME and put \$JAVA_HOME/bin on PATH."
fi
JAVA_VER=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
if [ "${JAVA_VER:-0}" != "17" ]; then
  die "Java ${JAVA_VER:-unknown} found at $(command -v java); Riverdelta is tested on Java 17 only
       (Spark 4.1 supports 17/21, Kafka 4.1 broker 17+). Point JAVA_HOME/PATH at a JDK 17."
fi
command -v mvn >/dev/null 2>&1 || die "Maven (mvn) not found: it resolves the Kafka, Spark-Kafka and Delta jars from Maven Central. Install it (Debian: apt-get install maven)."

# --- Python ------------------------------------------------------------------
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "$("$PY" -V 2>&1) found; the lock is made for Python 3.11. Set PYTHON=python3.11."

LOCK_HASH=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP="$VENV/.riverdelta-lock-$LOCK_HASH"
if [ -f "$STAMP" ]; then
  echo "setup: Python environment up to date ($VENV, lock $LOCK_HASH)"
else
  echo "setup: installing the locked Python set into $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  "$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" requirements.lock
  # Editable, without build isolation: setuptools comes from the lock, so this
  # step needs no network either.
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -m pip check --disable-pip-version-check
  rm -f "$VENV"/.riverdelta-lock-*
  touch "$STAMP"
fi

if [ "$TEST_TOOLS" = 1 ]; then
  TEST_STAMP="$VENV/.riverdelta-lock-test-$(sha256sum requirements-test.lock | cut -c1-16)"
  if [ ! -f "$TEST_STAMP" ]; then
    echo "setup: installing the tests' Python set (requirements-test.lock)"
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r requirements-test.lock
    touch "$TEST_STAMP"
  fi
  bash scripts/test_tools.sh
fi

# --- JVM jars ----------------------------------------------------------------
"$VENV/bin/riverdelta" jars fetch
