#!/usr/bin/env bash
# Installs faasd as a systemd service on Debian 12, as root. Safe to run again: a second run is an upgrade (the
# installed copy is replaced whole), and the operator's settings are never overwritten.
#
#   tools/install.sh [--prefix DIR]               install into DIR (default /opt/faasd)
#   tools/install.sh --uninstall [--purge] [--prefix DIR]
#                                                 stop and remove the service, the faas command and DIR; --purge also
#                                                 removes /etc/faasd and the state directory (/var/lib/faasd)
#
# What an install writes:
#   DIR/                               this checkout without .git, .state, .exp, bench/out, dist and what is generated;
#                                      its own Deno in DIR/.tools (copied from this checkout's, which tools/setup.sh
#                                      installs from npm), and node_modules, proto/gen and .tools/bin (faasd-shim,
#                                      faasd-runc, faasd-adapter) made there by `deno task gen` (starting from the checkout's own,
#                                      when it has them and they are up to date): the copy needs nothing outside it
#   /etc/faasd/env                     FAASD_* settings (mode 0600), written only when missing
#   /var/lib/faasd/                    the state directory (mode 0700), when missing
#   /etc/systemd/system/faasd.service  from tools/faasd.service.in
#   /usr/local/bin/faas                the CLI, for use from any directory
#
# FAASD_INSTALL_ROOT=DIR puts /etc, /usr/local/bin and /var/lib under DIR (and the default prefix becomes
# DIR/opt/faasd); every file written names the paths where things really are. systemd is then only told through
# `systemctl --root=DIR` (the enable links), never started or stopped: tests install into a temporary root this way.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROOT=${FAASD_INSTALL_ROOT:-}
ROOT=${ROOT%/}
MARKER=.faasd-install # in DIR: what the uninstall (and a reinstall) may remove
WRAPPER_TAG="installed by faasd's tools/install.sh"
# What faasd runs with and is built with; tools/setup.sh installs these (and more) when one is missing.
PACKAGES=(containerd runc nftables iproute2 golang-github-containers-common gcc libc6-dev libseccomp-dev
  golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev)
SOURCE_EXCLUDES=(./.git ./.state ./.exp ./bench/out ./node_modules ./.tools ./proto/gen ./dist)

say() { printf 'install: %s\n' "$*"; }
die() {
  printf 'install: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

mode=install
purge=0
prefix=""
while (($#)); do
  case $1 in
  --prefix)
    (($# >= 2)) || die "--prefix needs a directory"
    prefix=$2
    shift 2
    ;;
  --prefix=*)
    prefix=${1#--prefix=}
    shift
    ;;
  --uninstall)
    mode=uninstall
    shift
    ;;
  --purge)
    purge=1
    shift
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *) die "unknown argument '$1' (see tools/install.sh --help)" ;;
  esac
done
((purge == 0)) || [[ $mode == uninstall ]] || die "--purge goes with --uninstall"

# Paths go into a unit file, a sed expression and a shell script unquoted: keep them plain.
plain_path() { [[ $1 == /* && $1 =~ ^[A-Za-z0-9._/+-]+$ && $1 != */ && ! $1 =~ (^|/)\.\.?(/|$) ]]; }
[[ -z $ROOT ]] || plain_path "$ROOT" || die "FAASD_INSTALL_ROOT must be an absolute, plain path (got '$ROOT')"
ETC_DIR=$ROOT/etc/faasd
ENV_FILE=$ETC_DIR/env
UNIT_DIR=$ROOT/etc/systemd/system
UNIT=$UNIT_DIR/faasd.service
BIN=$ROOT/usr/local/bin/faas
STATE_DEFAULT=$ROOT/var/lib/faasd

if [[ -n $ROOT ]]; then
  systemd=root # only links, through systemctl --root; the host's systemd is never asked to do anything
elif [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  systemd=running
elif command -v systemctl >/dev/null; then
  systemd=offline # installed but not PID 1 (a container, a chroot): enable links work, starting does not
else
  systemd=none
fi
[[ -n $ROOT || $EUID -eq 0 ]] || die "run as root (or with FAASD_INSTALL_ROOT set, for a test install)"

# The last KEY=VALUE of the settings file, without quotes; empty when unset.
env_value() {
  [[ -r $ENV_FILE ]] || return 0
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ENV_FILE" | tail -n 1 |
    sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

package_installed() {
  # shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not a shell variable
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# ---------------------------------------------------------------------------------------------------- uninstall

do_uninstall() {
  if [[ -z $prefix && -f $UNIT ]]; then
    prefix=$(sed -n 's/^WorkingDirectory=//p' "$UNIT" | tail -n 1)
  fi
  prefix=${prefix:-$ROOT/opt/faasd}
  plain_path "$prefix" || die "--prefix must be an absolute, plain path (got '$prefix')"

  if [[ -f $UNIT ]]; then
    case $systemd in
    running)
      systemctl disable --now faasd.service >/dev/null 2>&1 || true
      say "service: stopped and disabled faasd.service"
      ;;
    root)
      systemctl --root="$ROOT" disable faasd.service >/dev/null 2>&1 || true
      say "service: disabled faasd.service under $ROOT (systemctl --root)"
      ;;
    offline)
      if systemctl disable faasd.service >/dev/null 2>&1; then
        say "service: disabled faasd.service (systemd is not running here: nothing to stop)"
      else
        say "service: could not disable faasd.service (systemd is not running here); removing it anyway"
      fi
      ;;
    none) say "service: no systemctl here; removing the unit file only" ;;
    esac
    rm -f -- "$UNIT"
    [[ $systemd != running ]] || systemctl daemon-reload
    say "unit: removed $UNIT"
  else
    say "unit: $UNIT is not there"
  fi

  if [[ -f $BIN ]] && grep -qF "$WRAPPER_TAG" "$BIN"; then
    rm -f -- "$BIN"
    say "command: removed $BIN"
  elif [[ -e $BIN ]]; then
    say "command: left $BIN: it was not written by this installer"
  else
    say "command: $BIN is not there"
  fi

  if [[ -f $prefix/$MARKER ]]; then
    rm -rf -- "$prefix" "$prefix.new" "$prefix.old" # with what an interrupted install left beside it
    say "files: removed $prefix"
  elif [[ -e $prefix ]]; then
    say "files: left $prefix: it is not a faasd install (no $MARKER in it)"
  else
    say "files: $prefix is not there"
  fi
  # faasd-runc's compiled seccomp filters (a cache, rebuilt on demand).
  if [[ -d $ROOT/run/faasd-runc ]]; then
    rm -rf -- "$ROOT/run/faasd-runc"
    say "cache: removed $ROOT/run/faasd-runc"
  fi

  local state namespace
  state=$(env_value FAASD_STATE_DIR)
  state=${state:-$STATE_DEFAULT}
  if ((purge == 0)); then
    say "kept: $ENV_FILE and $state (tools/install.sh --uninstall --purge removes them)"
    return
  fi
  if [[ ! -e $state ]]; then
    say "purge: $state is not there"
  elif ! plain_path "$state" || [[ $state == / ]]; then
    say "purge: left $state: not a plain absolute path"
  elif grep -qF " $state/" /proc/self/mountinfo || grep -qF " $state " /proc/self/mountinfo; then
    die "purge: something is still mounted under $state (is faasd running?); stop it and unmount first"
  elif [[ $state == "$STATE_DEFAULT" || -f $state/faasd.db || -z $(ls -A "$state") ]]; then
    rm -rf --one-file-system -- "$state"
    say "purge: removed the state directory $state"
  else
    say "purge: left $state: it does not look like faasd's state directory (no faasd.db)"
  fi
  namespace=$(env_value FAASD_NAMESPACE)
  rm -rf -- "$ETC_DIR"
  say "purge: removed $ETC_DIR"
  say "purge: function images stay in containerd (ctr -n ${namespace:-faasd} images ls)"
}

# ------------------------------------------------------------------------------------------------------ install

# tools/setup.sh installs the Debian packages and Deno into this checkout's .tools/; it runs only when one is missing.
setup_if_needed() {
  local missing=() p want have
  for p in "${PACKAGES[@]}"; do package_installed "$p" || missing+=("$p"); done
  want=$(sed -n 's/^DENO_VERSION=//p' "$SRC/tools/setup.sh")
  have=$("$SRC/.tools/node_modules/.bin/deno" --version 2>/dev/null | head -n 1 | cut -d ' ' -f 2) || true
  if ((${#missing[@]} == 0)) && [[ -n $have && (-z $want || $have == "$want") ]]; then
    say "packages: containerd, runc and faasd's other packages are installed; deno $have is in $SRC/.tools"
    return
  fi
  say "setup: running tools/setup.sh (missing packages: ${missing[*]:-none}; deno: ${have:-none}, wanted ${want:-any})"
  "$SRC/tools/setup.sh"
  missing=()
  for p in "${PACKAGES[@]}"; do package_installed "$p" || missing+=("$p"); done
  ((${#missing[@]} == 0)) || die "still missing after tools/setup.sh: ${missing[*]}"
  [[ -x $SRC/.tools/node_modules/.bin/deno ]] || die "tools/setup.sh left no deno in $SRC/.tools"
}

enable_containerd() {
  case $systemd in
  running)
    if systemctl enable --now containerd.service >/dev/null 2>&1; then
      say "containerd: enabled and running (systemctl enable --now containerd)"
    else
      say "containerd: could not enable --now containerd.service (faasd.service requires it): see systemctl status containerd"
    fi
    ;;
  offline)
    if systemctl enable containerd.service >/dev/null 2>&1; then
      say "containerd: enabled for the next boot; systemd is not running here, so it was not started"
    else
      say "containerd: could not be enabled (systemd is not running here); start containerd yourself before faasd"
    fi
    ;;
  root) say "containerd: left alone (FAASD_INSTALL_ROOT=$ROOT: the host's systemd is not touched)" ;;
  none) say "containerd: no systemctl here; start containerd yourself before faasd" ;;
  esac
}

# The copy is built beside the prefix and swapped in only once it runs: a failed upgrade leaves the old one in place.
build_copy() {
  local stage=$1 deno=$1/.tools/node_modules/.bin/deno log excludes=() e
  rm -rf -- "$stage"
  mkdir -p -- "$stage"
  for e in "${SOURCE_EXCLUDES[@]}"; do excludes+=("--exclude=$e"); done
  # Exit status 1 of GNU tar is "a file changed while being read" (someone is editing the checkout): not fatal.
  { tar -C "$SRC" "${excludes[@]}" --warning=no-file-changed -cf - . || (($? == 1)); } |
    tar -C "$stage" --no-same-owner -xf -
  chmod -R go-w -- "$stage" # runs as root: only root may change it
  say "files: copied $SRC into $stage (without ${SOURCE_EXCLUDES[*]})"

  mkdir -p -- "$stage/.tools"
  cp -R --preserve=mode,timestamps,links -- "$SRC/.tools/node_modules" "$stage/.tools/"
  for e in package.json package-lock.json; do
    [[ ! -f $SRC/.tools/$e ]] || cp -p -- "$SRC/.tools/$e" "$stage/.tools/"
  done
  say "deno: $("$deno" --version | head -n 1) copied into $stage/.tools"

  # What the checkout generated, with its times: gen below compares the same times as it would in the checkout, so it
  # rebuilds exactly what is out of date (or missing) and skips buf's half minute otherwise.
  [[ ! -d $SRC/proto/gen ]] || cp -R --preserve=mode,timestamps -- "$SRC/proto/gen" "$stage/proto/"
  [[ ! -d $SRC/.tools/bin ]] || cp -R --preserve=mode,timestamps -- "$SRC/.tools/bin" "$stage/.tools/"

  log=$(mktemp)
  if ! (cd "$stage" && PATH="$stage/.tools/node_modules/.bin:$PATH" DENO_NO_UPDATE_CHECK=1 deno task -q gen) \
    >"$log" 2>&1; then
    cat -- "$log" >&2
    rm -f -- "$log"
    die "deno task gen failed in $stage"
  fi
  rm -f -- "$log"
  for e in faasd-shim faasd-runc faasd-adapter; do
    [[ -x $stage/.tools/bin/$e ]] || die "deno task gen built no $stage/.tools/bin/$e"
  done
  say "gen: node_modules, proto/gen and .tools/bin/{faasd-shim,faasd-runc,faasd-adapter} up to date in $stage (deno task gen)"

  # The service's own command line, with --help: the copy must start offline with its own Deno cache.
  (cd "$stage" && DENO_DIR="$stage/.deno" DENO_NO_UPDATE_CHECK=1 \
    "$deno" run --cached-only --allow-all "$stage/main.ts" --help >/dev/null) ||
    die "the installed faasd does not start: (cd $stage && $deno run --cached-only --allow-all main.ts --help)"
  DENO_DIR="$stage/.deno" DENO_NO_UPDATE_CHECK=1 "$deno" run --cached-only --allow-net --allow-read --allow-write \
    --allow-env --allow-run "$stage/cli.ts" --help >/dev/null ||
    die "the installed faas does not start: $deno run --cached-only ... $stage/cli.ts --help"
  rm -rf -- "$stage/.deno"
  say "check: faasd --help and faas --help run from the copy, offline"

  printf 'faasd, installed by tools/install.sh from %s (%s) on %s\n' "$SRC" \
    "$(git -C "$SRC" describe --always --dirty 2>/dev/null || echo "not a git checkout")" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stage/$MARKER"
}

write_env_file() {
  if [[ -e $ENV_FILE ]]; then
    say "settings: kept $ENV_FILE (an existing file is never overwritten)"
    return
  fi
  mkdir -p -- "$ETC_DIR"
  local tmp
  tmp=$(mktemp "$ETC_DIR/.env.XXXXXX") # mode 0600
  cat >"$tmp" <<EOF
# faasd's settings, read by faasd.service (EnvironmentFile=): one FAASD_<FLAG>=VALUE a line for any flag of
# \`faasd --help\` (a flag given in ExecStart wins). Written once by tools/install.sh, never overwritten: yours to
# edit. Then: systemctl restart faasd
#
# Function addresses, from host .10 upward; in production a routable pool, routed to this host:
#FAASD_IP_POOL=127.10.0.0/24
# Control API address (keep it on loopback, or set a token and put TLS in front). \`faas\` on this host reads it here.
#FAASD_API=127.0.0.1:8080
# SQLite registry, control sockets, logs, secrets; tools/install.sh --uninstall keeps it unless --purge.
FAASD_STATE_DIR=$STATE_DEFAULT
# Bearer token the control API requires (16+ visible ASCII characters), e.g. from \`openssl rand -hex 32\`.
# \`faas\` run as root on this host reads it here.
#FAASD_API_TOKEN=
# How long a stop waits for requests in flight; keep it below TimeoutStopSec (30s) of faasd.service.
#FAASD_SHUTDOWN_GRACE=10s
EOF
  chmod 0600 -- "$tmp"
  mv -T -- "$tmp" "$ENV_FILE"
  say "settings: wrote $ENV_FILE (mode 0600; FAASD_API_TOKEN and the others commented out)"
}

make_state_dir() {
  local state
  state=$(env_value FAASD_STATE_DIR)
  state=${state:-$STATE_DEFAULT}
  if [[ -d $state ]]; then
    say "state: $state is there (kept)"
  else
    mkdir -p -- "$(dirname "$state")"
    mkdir -m 0700 -- "$state"
    say "state: created $state (mode 0700)"
  fi
}

write_unit() {
  local template=$SRC/tools/faasd.service.in
  mkdir -p -- "$UNIT_DIR"
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@DENO@|$prefix/.tools/node_modules/.bin/deno|g" \
    -e "s|@ENV_FILE@|$ENV_FILE|g" "$template" >"$UNIT.tmp"
  if grep -q '@[A-Z_]*@' "$UNIT.tmp"; then
    rm -f -- "$UNIT.tmp"
    die "$template has a placeholder this script does not fill"
  fi
  chmod 0644 -- "$UNIT.tmp"
  mv -T -- "$UNIT.tmp" "$UNIT"
  say "unit: wrote $UNIT from tools/faasd.service.in"
}

write_wrapper() {
  mkdir -p -- "$(dirname "$BIN")"
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@ENV_FILE@|$ENV_FILE|g" -e "s|@TAG@|$WRAPPER_TAG|g" >"$BIN.tmp" <<'EOF'
#!/bin/sh
# faas, faasd's CLI: @TAG@ from @PREFIX@.
# It runs in the caller's directory, so relative paths (faas new --tar ./x.tar, faas init c x) are the caller's.
# FAAS_URL and FAAS_TOKEN default to FAASD_API and FAASD_API_TOKEN of @ENV_FILE@ when it is readable.
setting() {
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "@ENV_FILE@" 2>/dev/null | tail -n 1 |
    sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}
if [ -z "${FAAS_URL:-}" ] && [ -r "@ENV_FILE@" ]; then
  api=$(setting FAASD_API)
  case $api in
  "") ;;
  0.0.0.0:*) FAAS_URL="http://127.0.0.1:${api#0.0.0.0:}" ;;
  "[::]:"*) FAAS_URL="http://[::1]:${api#"[::]:"}" ;;
  *) FAAS_URL="http://$api" ;;
  esac
  if [ -n "${FAAS_URL:-}" ]; then export FAAS_URL; fi
fi
if [ -z "${FAAS_TOKEN:-}" ] && [ -r "@ENV_FILE@" ]; then
  FAAS_TOKEN=$(setting FAASD_API_TOKEN)
  if [ -n "$FAAS_TOKEN" ]; then export FAAS_TOKEN; else unset FAAS_TOKEN; fi
fi
# The CLI resolves `faas init`'s directory against INIT_CWD (which deno task sets): here, the caller's directory.
INIT_CWD=$(pwd)
DENO_NO_UPDATE_CHECK=1
export INIT_CWD DENO_NO_UPDATE_CHECK
exec "@PREFIX@/.tools/node_modules/.bin/deno" run --cached-only --allow-net --allow-read --allow-write --allow-env \
  --allow-run --config "@PREFIX@/deno.json" "@PREFIX@/cli.ts" "$@"
EOF
  chmod 0755 -- "$BIN.tmp"
  mv -T -- "$BIN.tmp" "$BIN"
  say "command: wrote $BIN (runs $prefix/cli.ts from the caller's directory)"
}

enable_service() {
  case $systemd in
  running)
    systemctl daemon-reload
    systemctl enable faasd.service >/dev/null 2>&1
    systemctl restart faasd.service || die "faasd.service did not start: journalctl -u faasd"
    say "service: faasd.service enabled and (re)started; systemctl status faasd, journalctl -u faasd"
    ;;
  offline)
    if systemctl enable faasd.service >/dev/null 2>&1; then
      say "service: faasd.service enabled for the next boot; systemd is not running here, so it was not started"
    else
      say "service: systemd is not running here; once it is: systemctl daemon-reload && systemctl enable --now faasd"
    fi
    ;;
  root)
    local out
    if out=$(systemctl --root="$ROOT" enable faasd.service 2>&1); then
      say "service: faasd.service enabled under $ROOT (systemctl --root); not started"
    else
      say "service: could not enable faasd.service under $ROOT: ${out//$'\n'/ }"
    fi
    ;;
  none) say "service: no systemctl here; run $prefix/.tools/node_modules/.bin/deno run --allow-all main.ts in $prefix" ;;
  esac
}

do_install() {
  prefix=${prefix:-$ROOT/opt/faasd}
  plain_path "$prefix" || die "--prefix must be an absolute, plain path (got '$prefix')"
  case $prefix/ in "$SRC"/* | /) die "--prefix $prefix is (inside) the checkout itself" ;; esac
  case $SRC/ in "$prefix"/*) die "--prefix $prefix contains the checkout" ;; esac
  if [[ -e $prefix && ! -f $prefix/$MARKER && -n $(ls -A "$prefix" 2>/dev/null || echo x) ]]; then
    die "$prefix exists and is not a faasd install (no $MARKER): not replacing it"
  fi

  setup_if_needed
  enable_containerd

  local stage=$prefix.new
  trap 'rm -rf -- "$prefix.new"' EXIT
  build_copy "$stage"
  mkdir -p -- "$(dirname "$prefix")"
  rm -rf -- "$prefix.old"
  [[ ! -e $prefix ]] || mv -T -- "$prefix" "$prefix.old"
  mv -T -- "$stage" "$prefix"
  rm -rf -- "$prefix.old"
  trap - EXIT
  say "files: installed into $prefix"

  write_env_file
  make_state_dir
  write_unit
  write_wrapper
  enable_service
  say "done: faas --help; settings in $ENV_FILE"
}

"do_$mode"
