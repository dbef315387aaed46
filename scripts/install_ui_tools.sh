#!/usr/bin/env bash
# Installs what web_tests/ needs that pip cannot provide: Debian's Chromium, driven by
# Playwright for Python (whose own browser download is not reachable here). Idempotent and
# quick when Chromium is already present.
#
# Usage: sudo scripts/install_ui_tools.sh     (prints the Chromium version it found)
set -euo pipefail

if [[ ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "install_ui_tools.sh: /usr/bin/chromium is missing; run as root to install it with apt-get" >&2
    exit 1
  fi
  echo "install_ui_tools.sh: installing chromium"
  # apt-cache knows no chromium before the first `apt-get update` on a fresh machine.
  if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -qq
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation
  fi
fi

/usr/bin/chromium --version
