#!/usr/bin/env bash
# Idempotent environment set-up: Java check, virtualenv with the locked Python
# set, then the JVM jars from Maven Central into the project cache.
# A second run with an unchanged lock and a verified jar cache touches no network.
set -euo pipefail
cd "$(dirname "$0")/.."

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

# --- docker-compose ----------------------------------------------------------
# Only to validate docker-compose.yml (`docker-compose config` needs no engine);
# tests/unit/test_compose.py fails without it. No recommends: never pull in docker.io.
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "setup: installing docker-compose (Debian package) to validate docker-compose.yml"
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
  APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get)
  { "${APT[@]}" install -y -q --no-install-recommends docker-compose \
    || { "${APT[@]}" update -q && "${APT[@]}" install -y -q --no-install-recommends docker-compose; }; } >/dev/null \
    || die "docker-compose is missing and \`apt-get install docker-compose\` failed (needs root or sudo).
       Install it yourself (Debian: apt-get install --no-install-recommends docker-compose); the compose tests need it."
fi

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

# --- JVM jars ----------------------------------------------------------------
"$VENV/bin/riverdelta" jars fetch
