#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the gateway needs, only those that are missing.
#   scripts/install-system-deps.sh        what `make run` needs: redis-server, python3-venv
#   scripts/install-system-deps.sh test   also what the test suite needs: chromium (browser tests),
#                                         nginx (forward-auth tests with a real nginx), nodejs and
#                                         npm (the OpenID provider of gateway/data/devidp)
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${1:-}" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # the benchmark's smoke run
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)  # gateway/data/devidp: oidc-provider, a real OpenID provider
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
