#!/bin/sh
# /usr/bin/wardgate, installed by deploy/install.sh: runs the app in /opt/wardgate.
#
# Run by root, a command that works on the gateway's state runs as the wardgate user, with the
# agent's two capabilities (CAP_NET_ADMIN for nft, conntrack and net sysctls; CAP_NET_RAW for
# ping) and nothing else. Otherwise `wardgate policy apply` or `backup keygen` run by root would
# leave files in /var/lib/wardgate that the agent, which runs as wardgate, cannot write or read.
# Files named on the command line must then be readable by wardgate (and --out writable).
# WARDGATE_AS_ROOT=1 keeps root (afterwards: chown -R wardgate:wardgate /var/lib/wardgate).
#
# Commands that never touch the state keep the caller: console (the console's own keys), demo
# (builds network namespaces), broker, version, help, mqtt schemas, policy schema, backup verify.
set -eu
NODE=/usr/bin/node
MAIN=/opt/wardgate/bin/wardgate.js
CAPS=-all,+net_admin,+net_raw

if [ "$(id -u)" = 0 ] && [ "${WARDGATE_AS_ROOT:-}" != 1 ] && id -u wardgate >/dev/null 2>&1; then
  case "${1:-}:${2:-}" in
    console:* | demo:* | broker:* | version:* | help:* | mqtt:* | policy:schema | backup:verify | : | -h:* | --help:*) ;;
    *)
      exec setpriv --reuid=wardgate --regid=wardgate --init-groups \
        --inh-caps="$CAPS" --ambient-caps="$CAPS" --bounding-set="$CAPS" \
        -- "$NODE" --max-semi-space-size=1 "$MAIN" "$@"
      ;;
  esac
fi
exec "$NODE" --max-semi-space-size=1 "$MAIN" "$@"
