#!/usr/bin/env bash
# Install everything conveyor's demo and tests need on a fresh Debian 12 machine, then the package
# itself into .venv. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# skopeo: the baseline of bench/registry_copy.py.
# openssh-server, openssh-client, iproute2: the ssh-hosts tests run hosts in network namespaces with sshd.
# chromium, fonts-dejavu-core: the dashboard's browser tests (Playwright drives Debian's Chromium).
# prometheus: the metrics tests scrape a test server with a real Prometheus (tests/prometheus.py).
DEBIAN_PACKAGES=(git docker-registry buildah podman runc catatonit haproxy busybox-static postgresql curl
                 openssh-server openssh-client iproute2 skopeo chromium fonts-dejavu-core prometheus)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/conveyor)"
