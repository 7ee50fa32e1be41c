#!/bin/sh
# Makes a release tarball that deploy/install.sh (and the Ansible role) installs without the npm
# registry: the built app, production node_modules, the example configuration and deploy/.
#
#   deploy/release.sh [--out DIR] [--keep-dir] [--with-node-red]
#
# writes DIR/wardgate-<version>.tar.gz (DIR defaults to .); --keep-dir also leaves the unpacked
# tree, DIR/wardgate-<version>/, from which deploy/install.sh can run at once. --with-node-red
# also ships the optional packages (Node-RED, about 250 MB) for gateways whose gateway.yaml has a
# nodeRed: block (docs/nodered.md); without it such a gateway refuses to start Node-RED.
#
# Run it in a checkout after `npm ci && npm run build`. The tarball does not depend on the build
# machine's CPU: the one native module (@serialport/bindings-cpp, for Modbus RTU) ships prebuilt
# binaries for arm, arm64 and x64, and ssh2's optional native part is not built (allowScripts).
set -eu
umask 022

usage() {
  echo "usage: deploy/release.sh [--out DIR] [--keep-dir] [--with-node-red]" >&2
  exit 2
}
OUT=.
KEEP=0
OMIT="--omit=dev --omit=optional"
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
    --keep-dir) KEEP=1; shift ;;
    --with-node-red) OMIT="--omit=dev"; shift ;;
    *) usage ;;
  esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$SRC/dist/agent/cli/main.js" ] || { echo "release.sh: dist/ is missing: run npm run build first" >&2; exit 1; }
[ -d "$SRC/node_modules" ] || { echo "release.sh: node_modules/ is missing: run npm ci first" >&2; exit 1; }
VERSION=$(node -p "require('$SRC/package.json').version")
NAME=wardgate-$VERSION
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

STAGE=$WORK/$NAME
mkdir -p "$STAGE/hardware"
for f in bin dist package.json package-lock.json rules gateway.example.yaml docs deploy flows README.md; do
  cp -RP "$SRC/$f" "$STAGE/"
done
cp "$SRC/hardware/netcheck.mjs" "$STAGE/hardware/"
# Source maps point at agent/*.ts, which a release does not carry.
find "$STAGE/dist" -name '*.js.map' -exec rm -f {} +
# The production packages only, as npm ls --omit=dev --omit=optional names them (with what they
# nest; optional: Node-RED and its dashboard are for a console, not a gateway: docs/console.md), rather
# than all of node_modules and a prune: copying thousands of dev files to delete them is slow,
# and npm prune has been seen to answer "up to date" over dev packages. The prune then only
# tidies (bin links, the hidden lockfile).
# shellcheck disable=SC2086 # OMIT is two words on purpose
(cd "$SRC" && { npm ls $OMIT --all --parseable 2>/dev/null || true; }) |
  sed -n "s#^$SRC/\(node_modules/\(@[^/]*/\)\{0,1\}[^/]*\).*#\1#p" | sort -u >"$WORK/packages"
[ -s "$WORK/packages" ] || { echo "release.sh: npm ls listed no production package" >&2; exit 1; }
mkdir -p "$STAGE/node_modules"
tar -C "$SRC" -cf - -T "$WORK/packages" | tar -C "$STAGE" -xf -
# shellcheck disable=SC2086
(cd "$STAGE" && npm prune $OMIT --offline --no-audit --no-fund --loglevel=error >/dev/null)
commit=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)
printf 'wardgate %s\ncommit %s\n' "$VERSION" "$commit" >"$STAGE/RELEASE"
chmod -R u+rwX,go+rX,go-w "$STAGE"
tar -C "$WORK" --owner=0 --group=0 --numeric-owner -czf "$OUT/$NAME.tar.gz" "$NAME"
if [ "$KEEP" = 1 ]; then
  rm -rf "${OUT:?}/$NAME"
  mv "$STAGE" "$OUT/$NAME"
  echo "$OUT/$NAME"
fi
echo "$OUT/$NAME.tar.gz"
