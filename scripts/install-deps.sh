#!/usr/bin/env bash
# Installs what wardgate, its demo and its tests need on Debian 12 / Raspberry Pi OS: as root,
# the OS packages (nftables, iproute2, ...; chromium only for the console's dashboard tests);
# and the node modules from package-lock.json, which are all the demo needs without root.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nftables conntrack tcpdump iproute2 iputils-ping procps kmod iperf3 openssl mosquitto mosquitto-clients dcmtk python3-pymodbus python3-serial python3-serial-asyncio mbpoll socat systemd ieee-data graphviz rsyslog rsyslog-gnutls tftpd-hpa chromium ansible-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    # npm start without root needs none of them; the tests do (and root for their namespaces).
    echo "install-deps: not root, so these packages are not installed: ${missing[*]}" >&2
    echo "install-deps: the demo runs without them; run this as root before npm test" >&2
  else
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# Bridge mode filters bridged IPv4/IPv6 through br_netfilter; load it where it is a module.
if [ "$(id -u)" -eq 0 ] && [ ! -d /proc/sys/net/bridge ]; then
  modprobe br_netfilter 2>/dev/null || echo "install-deps: br_netfilter could not be loaded; bridge-mode tests will skip" >&2
fi

npm ci --no-fund --no-audit
