#!/bin/sh
# wardgate's installer for Debian 12 and Raspberry Pi OS (bookworm). See docs/install.md.
#
#   install.sh [--root DIR] [--release FILE] [--no-packages] [--no-systemd]
#              install|upgrade|uninstall [--purge]
#
#   install     the runtime packages, the wardgate user (in the group dialout, for serial
#               lines), the app in /opt/wardgate, the command /usr/bin/wardgate, /etc/wardgate
#               (gateway.yaml and rules/ only where absent), /var/lib/wardgate, the backup keys
#               (only where absent), the systemd units (enabled, not started). Running it again
#               changes nothing.
#   upgrade     the app, the command and the units from this copy; configuration, state and keys
#               are kept; the agent is restarted if it was running.
#   uninstall   the app, the command and the units; /etc/wardgate and /var/lib/wardgate are kept
#               unless --purge, which removes them and the wardgate user too.
#
#   --root DIR     install into DIR (an image being built, a test) and leave the running system
#                  alone: no apt-get, modprobe, sysctl or systemctl other than `systemctl --root`.
#   --release FILE install the app from a release tarball (deploy/release.sh) instead of the
#                  tree around this script: unpacked once, straight into place.
#   --no-packages  do not apt-get; the packages are checked, and their absence is reported.
#   --no-systemd   no units, no systemctl.
#
# Without --release it installs what sits around it: the directory above deploy/ (an unpacked
# release, or a checkout after `npm run build`). Exit codes: 0 done, 1 failed, 2 usage.
set -eu
umask 022

usage() {
  sed -n '4,6p' "$0" | sed 's/^# \{0,3\}//' >&2
  exit 2
}

ROOT=/
RELEASE_TGZ=
PACKAGES=1
SYSTEMD=1
PURGE=0
CMD=
while [ $# -gt 0 ]; do
  case $1 in
    --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --release) [ $# -ge 2 ] || usage; RELEASE_TGZ=$2; shift 2 ;;
    --no-packages) PACKAGES=0; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --purge) PURGE=1; shift ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    install | upgrade | uninstall) [ -z "$CMD" ] || usage; CMD=$1; shift ;;
    *) echo "install.sh: unknown argument \"$1\"" >&2; usage ;;
  esac
done
[ -n "$CMD" ] || usage
if [ "$PURGE" = 1 ] && [ "$CMD" != uninstall ]; then
  echo "install.sh: --purge goes with uninstall" >&2
  exit 2
fi

SRC=$(cd "$(dirname "$0")/.." && pwd)
RELEASE_SHA=
if [ -n "$RELEASE_TGZ" ]; then
  [ -f "$RELEASE_TGZ" ] || { echo "install.sh: $RELEASE_TGZ: no such file" >&2; exit 2; }
  RELEASE_TGZ=$(cd "$(dirname "$RELEASE_TGZ")" && pwd)/$(basename "$RELEASE_TGZ")
  RELEASE_SHA=$(sha256sum "$RELEASE_TGZ" | cut -d ' ' -f 1)
fi
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
# R prefixes every path; LIVE: we install into the running system and may change it.
if [ "$ROOT" = / ]; then R=; LIVE=1; else R=$ROOT; LIVE=0; fi
APP=$R/opt/wardgate
ETC=$R/etc/wardgate
STATE=$R/var/lib/wardgate
UNITS=$R/etc/systemd/system
WRAPPER=$R/usr/bin/wardgate
MODULES=$R/etc/modules-load.d/wardgate.conf
SYSCTL=$R/etc/sysctl.d/60-wardgate.conf
SYSCTL_ROUTER=$R/etc/sysctl.d/61-wardgate-router.conf
USER_NAME=wardgate
# package.json "engines".
NODE_MIN_MAJOR=20
NODE_MIN_MINOR=19

IS_ROOT=0
if [ "$(id -u)" = 0 ]; then IS_ROOT=1; fi
SYSTEMD_RUNNING=0
if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then SYSTEMD_RUNNING=1; fi

SUMMARY=
CHANGES=0
note() {
  SUMMARY="$SUMMARY  $*
"
}
# A line of the summary that changed something; the count ends the summary ("changes: 0" on a
# second install: what Ansible's changed_when reads).
change() {
  CHANGES=$((CHANGES + 1))
  note "$@"
}
say() { echo "install.sh: $*"; }
die() {
  echo "install.sh: $*" >&2
  exit 1
}
finish() {
  echo
  echo "wardgate $CMD ($(app_version "$SRC")) into ${ROOT}:"
  printf '%s' "$SUMMARY"
  echo "changes: $CHANGES"
}
app_version() {
  sed -n 's/^  "version": "\(.*\)",$/\1/p' "$1/package.json" 2>/dev/null | head -n 1
}

if [ "$LIVE" = 1 ] && [ "$IS_ROOT" = 0 ]; then
  die "installing into / needs root (sudo $0 ...), or use --root DIR"
fi

# ---- packages and Node.js ------------------------------------------------------------------

PKGS="nftables conntrack tcpdump iproute2 ieee-data iputils-ping procps kmod systemd util-linux"

node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  node -e "const [a, b] = process.versions.node.split('.').map(Number); process.exit(a > $NODE_MIN_MAJOR || (a === $NODE_MIN_MAJOR && b >= $NODE_MIN_MINOR) ? 0 : 1)"
}

# The nodejs that apt would install, when it is recent enough (NodeSource's repository, or a
# later Debian); Debian 12's own is 18, too old.
apt_node_ok() {
  candidate=$(apt-cache policy nodejs 2>/dev/null | sed -n 's/^ *Candidate: *//p' | sed 's/^[0-9]*://')
  major=${candidate%%.*}
  rest=${candidate#*.}
  minor=${rest%%.*}
  case $major$minor in '' | *[!0-9]*) return 1 ;; esac
  [ "$major" -gt "$NODE_MIN_MAJOR" ] || { [ "$major" -eq "$NODE_MIN_MAJOR" ] && [ "$minor" -ge "$NODE_MIN_MINOR" ]; }
}

packages() {
  missing=
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ "$LIVE" = 1 ] && [ "$PACKAGES" = 1 ]; then
    if ! node_ok; then
      apt-get update -q >/dev/null || true
      if apt_node_ok; then missing="$missing nodejs"; fi
    fi
    if [ -n "$missing" ]; then
      say "apt-get install$missing"
      apt-get update -q >/dev/null
      # shellcheck disable=SC2086 # one word per package
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
      change "packages: installed$missing"
    else
      note "packages: all there ($PKGS)"
    fi
  elif [ -n "$missing" ]; then
    if [ "$LIVE" = 1 ]; then
      note "packages: MISSING$missing (--no-packages): apt-get install$missing"
    else
      note "packages: not installed into $ROOT (--root): the image needs $PKGS and Node.js >= $NODE_MIN_MAJOR.$NODE_MIN_MINOR"
    fi
  fi
  if ! node_ok; then
    have=$(node --version 2>/dev/null || echo none)
    die "Node.js >= $NODE_MIN_MAJOR.$NODE_MIN_MINOR is needed (found: $have). Debian 12 ships 18: install Node.js 20 or 22 LTS from NodeSource (https://github.com/nodesource/distributions: its setup_22.x, then apt-get install nodejs), or an official build from nodejs.org, and run this again."
  fi
  NODE=$(command -v node)
}

# The node the units and the command run: /usr/bin/node, or where node is on this system.
unit_node() {
  if [ "$LIVE" = 1 ]; then command -v node; else echo /usr/bin/node; fi
}

# ---- the user ------------------------------------------------------------------------------

WG_UID=
WG_GID=
lookup_user() {
  WG_UID=
  WG_GID=
  if [ "$LIVE" = 1 ]; then
    if id -u "$USER_NAME" >/dev/null 2>&1; then
      WG_UID=$(id -u "$USER_NAME")
      WG_GID=$(id -g "$USER_NAME")
    fi
  elif [ -f "$R/etc/passwd" ]; then
    WG_UID=$(awk -F: -v u="$USER_NAME" '$1 == u { print $3 }' "$R/etc/passwd")
    WG_GID=$(awk -F: -v u="$USER_NAME" '$1 == u { print $4 }' "$R/etc/passwd")
  fi
}

ensure_user() {
  lookup_user
  if [ -n "$WG_UID" ]; then
    note "user: $USER_NAME ($WG_UID:$WG_GID) already there"
    return
  fi
  if [ "$IS_ROOT" = 0 ]; then
    note "user: NOT created (not root); files keep your ownership"
    return
  fi
  if [ "$LIVE" = 0 ] && [ ! -f "$R/etc/passwd" ]; then
    note "user: NOT created ($R/etc/passwd is missing); create $USER_NAME in the image and chown /var/lib/wardgate to it"
    return
  fi
  set -- --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment "wardgate agent" "$USER_NAME"
  if [ "$LIVE" = 1 ]; then useradd "$@"; else useradd --root "$ROOT" "$@"; fi
  lookup_user
  [ -n "$WG_UID" ] || die "useradd did not create $USER_NAME"
  change "user: $USER_NAME ($WG_UID:$WG_GID) created: system user, no home, no login"
}

# Serial lines (Modbus RTU devices behind the gateway, RTU backups: docs/protocols.md) belong to
# the group dialout; systemd gives the agent the groups the database lists for its user.
group_exists() {
  if [ "$LIVE" = 1 ]; then getent group "$1" >/dev/null; else grep -q "^$1:" "$R/etc/group" 2>/dev/null; fi
}
in_group() {
  awk -F: -v g="$1" -v u="$USER_NAME" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit f ? 0 : 1 }' "$R/etc/group"
}
ensure_serial() {
  if [ "$IS_ROOT" = 0 ] || [ -z "$WG_UID" ]; then return 0; fi
  if ! group_exists dialout; then
    note "serial ports: there is no group dialout; give $USER_NAME access to the RTU lines' devices"
  elif in_group dialout; then
    note "serial ports: $USER_NAME is in the group dialout"
  else
    if [ "$LIVE" = 1 ]; then usermod -a -G dialout "$USER_NAME"; else usermod --root "$ROOT" -a -G dialout "$USER_NAME"; fi
    change "serial ports: $USER_NAME added to the group dialout (Modbus RTU lines)"
  fi
}

# own OWNER [-R] PATH...: chown only where we may and there is someone to own it.
own() {
  owner=$1
  shift
  [ "$IS_ROOT" = 1 ] || return 0
  case $owner in *: | :*) return 0 ;; esac
  if [ "$1" = -R ]; then
    shift
    chown -R "$owner" "$@"
  else
    chown "$owner" "$@"
  fi
}

# Runs a command as the wardgate user (or as ourselves when there is none).
as_wardgate() {
  if [ "$IS_ROOT" = 1 ] && [ -n "$WG_UID" ]; then
    setpriv --reuid="$WG_UID" --regid="$WG_GID" --clear-groups -- "$@"
  else
    "$@"
  fi
}

# ---- the app -------------------------------------------------------------------------------

# What /opt/wardgate holds besides node_modules and the demo's hardware/netcheck.mjs.
APP_FILES="bin dist package.json package-lock.json rules gateway.example.yaml docs deploy"

# Modes as a release has them (u+rwX, go+rX, go-w), changing only what differs: a chmod of
# every one of thousands of files costs far more than looking at them.
normalise() {
  find "$1" \( -perm /022 -o ! -perm -444 -o \( -type d ! -perm -111 \) \) ! -type l -exec chmod u+rwX,go+rX,go-w {} +
}

# Copies the tree's app into $STAGE, a fresh directory next to /opt/wardgate.
stage_tree() {
  [ -f "$SRC/dist/agent/cli/main.js" ] || die "$SRC/dist is missing: run \"npm run build\" first, or install from a release (deploy/release.sh)"
  [ -f "$SRC/bin/wardgate.js" ] || die "$SRC is not a wardgate tree (bin/wardgate.js is missing)"
  mkdir -p "$STAGE/hardware"
  for f in $APP_FILES RELEASE; do
    if [ -e "$SRC/$f" ]; then cp -RP "$SRC/$f" "$STAGE/"; fi
  done
  # The demo's probe helper (wardgate demo).
  if [ -f "$SRC/hardware/netcheck.mjs" ]; then cp "$SRC/hardware/netcheck.mjs" "$STAGE/hardware/"; fi
  if [ -d "$SRC/node_modules" ]; then
    # -H: a checkout's node_modules may itself be a symbolic link.
    cp -RH "$SRC/node_modules" "$STAGE/"
    if [ ! -f "$SRC/RELEASE" ]; then
      # A development checkout: drop the dev dependencies, and the optional ones (Node-RED, for a
      # console, docs/console.md). Offline: npm only deletes.
      (cd "$STAGE" && npm prune --omit=dev --omit=optional --offline --no-audit --no-fund --loglevel=error >/dev/null) ||
        die "npm prune --omit=dev --omit=optional failed in $STAGE"
    fi
  else
    command -v npm >/dev/null 2>&1 || die "no node_modules in $SRC and no npm to fetch them: install from a release (deploy/release.sh)"
    (cd "$STAGE" && npm ci --omit=dev --omit=optional --no-audit --no-fund --loglevel=error) || die "npm ci --omit=dev --omit=optional failed (it needs the npm registry, or a release with node_modules)"
  fi
}

# Unpacks the release tarball into $STAGE: one write of each file, not an unpacked copy and
# then a copy of that. Its sha256 is kept beside the app to know it next time.
stage_tarball() {
  tar -xzf "$RELEASE_TGZ" -C "$STAGE" --strip-components=1 --no-same-owner || die "cannot unpack $RELEASE_TGZ"
  if [ ! -f "$STAGE/RELEASE" ] || [ ! -f "$STAGE/dist/agent/cli/main.js" ]; then die "$RELEASE_TGZ is not a wardgate release (deploy/release.sh)"; fi
  echo "$RELEASE_SHA" >"$STAGE/RELEASE.sha256"
}

# True when $APP holds exactly this release: nothing to copy (reading is far cheaper than
# copying thousands of small files onto an SD card). A checkout is always staged: its
# node_modules still has the dev dependencies, so it is pruned in the copy.
app_is_current() {
  [ -d "$APP" ] || return 1
  if [ -n "$RELEASE_TGZ" ]; then
    [ "$(cat "$APP/RELEASE.sha256" 2>/dev/null)" = "$RELEASE_SHA" ]
    return
  fi
  [ -f "$SRC/RELEASE" ] || return 1
  for f in $APP_FILES RELEASE node_modules hardware; do
    if [ -e "$SRC/$f" ] || [ -e "$APP/$f" ]; then diff -r -q "$SRC/$f" "$APP/$f" >/dev/null 2>&1 || return 1; fi
  done
}

install_app() {
  if app_is_current; then
    note "app: $APP unchanged ($(app_version "$APP"))"
    return
  fi
  STAGE=$R/opt/.wardgate.new.$$
  rm -rf "$STAGE"
  mkdir -p "$STAGE"
  if [ -n "$RELEASE_TGZ" ]; then stage_tarball; else stage_tree; fi
  normalise "$STAGE"
  if [ -d "$APP" ] && diff -r -q "$APP" "$STAGE" >/dev/null 2>&1; then
    rm -rf "$STAGE"
    note "app: $APP unchanged ($(app_version "$APP"))"
    return
  fi
  was=$(app_version "$APP" 2>/dev/null || true)
  # Swap by rename: a running agent keeps its open files, a new one finds a whole tree.
  if [ -d "$APP" ]; then
    rm -rf "$APP.old"
    mv "$APP" "$APP.old"
  fi
  mv "$STAGE" "$APP"
  rm -rf "$APP.old"
  if [ -n "$was" ]; then change "app: $APP replaced ($was -> $(app_version "$APP"))"; else change "app: $APP installed ($(app_version "$APP"))"; fi
}

# Installs a file if its content, mode or owner differ; says which.
put() {
  src=$1 dst=$2 mode=$3 owner=$4
  if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
    own "$owner" "$dst"
    note "$(basename "$dst"): $dst unchanged"
    return
  fi
  mkdir -p "$(dirname "$dst")"
  tmp=$dst.new.$$
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  own "$owner" "$tmp"
  mv -f "$tmp" "$dst"
  change "$(basename "$dst"): $dst installed"
}

# The command, with the node that the units use.
install_wrapper() {
  node_path=$(unit_node)
  tmp=$(mktemp)
  sed "s#^NODE=/usr/bin/node\$#NODE=$node_path#" "$SRC/deploy/wardgate.sh" >"$tmp"
  put "$tmp" "$WRAPPER" 0755 0:0
  rm -f "$tmp"
}

# ---- configuration, state, keys ------------------------------------------------------------

install_config() {
  mkdir -p "$ETC"
  chmod 0750 "$ETC"
  own "0:$WG_GID" "$ETC"
  if [ -e "$ETC/gateway.yaml" ]; then
    note "config: $ETC/gateway.yaml kept (never overwritten)"
  else
    cp "$SRC/gateway.example.yaml" "$ETC/gateway.yaml"
    chmod 0640 "$ETC/gateway.yaml"
    own "0:$WG_GID" "$ETC/gateway.yaml"
    change "config: $ETC/gateway.yaml from gateway.example.yaml: EDIT IT (site, gateway, interfaces, mqtt)"
  fi
  if [ -e "$ETC/rules" ]; then
    note "policies: $ETC/rules kept (never overwritten)"
  else
    cp -RP "$SRC/rules" "$ETC/rules"
    find "$ETC/rules" -type d -exec chmod 0750 {} +
    find "$ETC/rules" -type f -exec chmod 0640 {} +
    own "0:$WG_GID" -R "$ETC/rules"
    change "policies: $ETC/rules from rules/ (examples: replace them with this site's devices)"
  fi
}

install_state() {
  mkdir -p "$STATE"
  chmod 0750 "$STATE"
  # Whatever root left in the state directory (WARDGATE_AS_ROOT=1) goes back to the agent.
  own "$WG_UID:$WG_GID" -R "$STATE"
}

install_keys() {
  if [ -f "$STATE/keys/backup-data.key" ] && [ -f "$STATE/keys/gateway-ed25519.pem" ]; then
    note "backup keys: kept ($STATE/keys)"
    return
  fi
  # keygen never overwrites a key; --state-dir alone: the default key places, whatever the
  # gateway file says (a custom backup.keyFile is made with `wardgate backup keygen`).
  out=$(as_wardgate env -u WARDGATE_GATEWAY -u WARDGATE_STATE_DIR "$NODE" "$APP/bin/wardgate.js" backup keygen --state-dir "$STATE") ||
    die "wardgate backup keygen failed: $out"
  fp=$(printf '%s\n' "$out" | sed -n 's/.*(sha256 \([0-9a-f]*\)).*/\1/p')
  change "backup keys: made in $STATE/keys (gateway key sha256 $fp); keep a copy of backup-data.key off the gateway"
}

# ---- systemd and boot ----------------------------------------------------------------------

install_boot() {
  put "$SRC/deploy/modules-load.d/wardgate.conf" "$MODULES" 0644 0:0
  put "$SRC/deploy/sysctl.d/60-wardgate.conf" "$SYSCTL" 0644 0:0
  if grep -Eq '^mode:[[:space:]]*router([[:space:]]|$)' "$ETC/gateway.yaml" 2>/dev/null; then
    put "$SRC/deploy/sysctl.d/61-wardgate-router.conf" "$SYSCTL_ROUTER" 0644 0:0
  elif [ -e "$SYSCTL_ROUTER" ]; then
    rm -f "$SYSCTL_ROUTER"
    change "61-wardgate-router.conf: removed (gateway.yaml is not in router mode)"
  fi
  if [ "$LIVE" = 1 ]; then
    for m in br_netfilter nf_conntrack; do
      modprobe "$m" 2>/dev/null || note "module $m: could not be loaded now (it is loaded at boot)"
    done
    sysctl -q -p "$SYSCTL" >/dev/null 2>&1 || true
    if [ -e "$SYSCTL_ROUTER" ]; then
      sysctl -q -p "$SYSCTL_ROUTER" >/dev/null || note "sysctl: $SYSCTL_ROUTER could not be applied now"
    fi
  fi
}

install_units() {
  if [ "$SYSTEMD" = 0 ]; then
    note "systemd: skipped (--no-systemd): run /usr/bin/node $APP/bin/wardgate.js policy restore --state-dir /var/lib/wardgate at boot before the network, and wardgate run as user $USER_NAME"
    return
  fi
  node_path=$(unit_node)
  for u in wardgate.service wardgate-restore.service; do
    tmp=$(mktemp)
    sed "s#^ExecStart=/usr/bin/node #ExecStart=$node_path #" "$SRC/deploy/systemd/$u" >"$tmp"
    put "$tmp" "$UNITS/$u" 0644 0:0
    rm -f "$tmp"
  done
  if [ "$SYSTEMD_RUNNING" = 1 ]; then
    systemctl daemon-reload
    systemctl enable --quiet wardgate-restore.service wardgate.service
    note "systemd: units enabled (not started): edit $ETC/gateway.yaml and the policies, then systemctl start wardgate"
  elif [ "$LIVE" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --root="$ROOT" enable --quiet wardgate-restore.service wardgate.service
    note "systemd: units enabled in $ROOT"
  else
    note "systemd: not running here; on the gateway run: systemctl daemon-reload && systemctl enable wardgate-restore.service wardgate.service"
  fi
}

# ---- the commands --------------------------------------------------------------------------

# With --release, the rest (units, the command, the example configuration) comes from the
# release just installed, not from the tree this script sits in.
install_app_then_use_it() {
  install_app
  if [ -n "$RELEASE_TGZ" ]; then SRC=$APP; fi
}

do_install() {
  packages
  ensure_user
  ensure_serial
  install_app_then_use_it
  install_wrapper
  install_config
  install_state
  install_keys
  install_boot
  install_units
}

do_upgrade() {
  [ -f "$APP/bin/wardgate.js" ] || die "wardgate is not installed in $APP: use install"
  packages
  lookup_user
  ensure_serial
  install_app_then_use_it
  install_wrapper
  install_state
  install_boot
  install_units
  if [ "$SYSTEMD_RUNNING" = 1 ] && [ "$SYSTEMD" = 1 ]; then
    if systemctl is-active --quiet wardgate.service; then
      systemctl restart wardgate.service
      change "agent: restarted"
    else
      note "agent: not running, not started"
    fi
  fi
  note "config, policies, state and keys: kept"
}

do_uninstall() {
  if [ "$SYSTEMD_RUNNING" = 1 ]; then
    systemctl disable --now --quiet wardgate.service 2>/dev/null || true
    systemctl disable --quiet wardgate-restore.service 2>/dev/null || true
  elif [ "$LIVE" = 0 ] && command -v systemctl >/dev/null 2>&1 && [ -e "$UNITS/wardgate.service" ]; then
    systemctl --root="$ROOT" disable --quiet wardgate-restore.service wardgate.service 2>/dev/null || true
  fi
  for f in "$UNITS/wardgate.service" "$UNITS/wardgate-restore.service" "$MODULES" "$SYSCTL" "$SYSCTL_ROUTER" "$WRAPPER"; do
    if [ -e "$f" ]; then
      rm -f "$f"
      change "removed $f"
    fi
  done
  if [ "$SYSTEMD_RUNNING" = 1 ]; then systemctl daemon-reload; fi
  if [ -d "$APP" ]; then
    rm -rf "$APP"
    change "removed $APP"
  fi
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    change "removed $ETC and $STATE (with the backup keys)"
    lookup_user
    if [ -n "$WG_UID" ] && [ "$IS_ROOT" = 1 ]; then
      if [ "$LIVE" = 1 ]; then set --; else set -- --root "$ROOT"; fi
      userdel "$@" "$USER_NAME"
      # userdel leaves the group where login.defs lacks USERGROUPS_ENAB (a bare image).
      if grep -q "^$USER_NAME:" "$R/etc/group" 2>/dev/null; then groupdel "$@" "$USER_NAME"; fi
      change "removed the user $USER_NAME"
    fi
  else
    note "kept $ETC and $STATE (uninstall --purge removes them)"
  fi
  note "the wardgate table stays in the kernel until reboot (nft delete table inet wardgate removes it, and the devices' protection with it)"
}

case $CMD in
  install) do_install ;;
  upgrade) do_upgrade ;;
  uninstall) do_uninstall ;;
esac
finish
