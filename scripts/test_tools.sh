#!/usr/bin/env bash
# Debian packages only the tests need, kept off `make demo`'s path:
#   docker-compose  validates docker-compose.yml (`config -q` needs no engine);
#                   never its recommends, so docker.io is not pulled in.
#   chromium        the browser the UI test drives headless through playwright
#                   (playwright's own browser downloads are not reachable here).
# Idempotent: installs only what is missing.
set -euo pipefail

die() { echo "test-tools: $*" >&2; exit 1; }

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "test-tools: installing ${missing[*]} (Debian packages) for the tests"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get)
{ "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}" \
  || { "${APT[@]}" update -q && "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}"; }; } >/dev/null \
  || die "\`apt-get install ${missing[*]}\` failed (needs root or sudo). Install them yourself
       (Debian: apt-get install --no-install-recommends ${missing[*]}): the compose and browser tests need them."
