#!/usr/bin/env bash
# Install everything drtool and its embedded lab need on a fresh Debian 12 machine (as root):
# Debian packages for the lab's real parts, and a virtualenv (.venv) with drtool and its dev tools.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip    # drtool's own interpreter on a bare Debian 12
  iproute2 util-linux openssl           # namespaces, veths, unshare/nsenter, the lab CA
  openssh-server openssh-client         # each lab host's sshd; Ansible's ssh client
  docker.io                             # dockerd for each lab host's own engine
  docker-registry                       # Distribution registry, one per site
  bind9 bind9-dnsutils                  # authoritative DNS with TSIG updates; dig
  busybox-static                        # a tiny offline image for registry tests
  debootstrap                           # offline base images (no public registry reachable)
  prometheus prometheus-alertmanager    # the real alert chain (scrape, rule, webhook) drills run through; promtool
  chromium                              # headless: the drill report.html screenshot test
  nginx-light                           # serving_proxy: tests run their own nginx on 127.0.0.1 (never :80)
  openjdk-17-jre-headless               # the Java 17 runtime of ansible-rulebook's rules engine (the EDA rulebook test)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 2
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python 3.11 matches the local CPU torch wheel (cp311). Prefer an explicit 3.11.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 not found (set PYTHON=...)" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.drtool-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing drtool and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
