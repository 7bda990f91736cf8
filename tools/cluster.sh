#!/usr/bin/env bash
# A faasd cluster on one machine, hosts being network namespaces. As root:
#
#   tools/cluster.sh up N      start N hosts (and the router); starts what is missing, so it also resumes a partial up
#   tools/cluster.sh add       add host N+1 to a running cluster (prints its API URL)
#   tools/cluster.sh kill I    kill host I the hard way (SIGKILL to everything in its netns), then delete its netns
#   tools/cluster.sh status    print what runs
#   tools/cluster.sh etcd stop|start   stop the cluster's etcd (SIGKILL, data kept) or start it again
#   tools/cluster.sh down [--keep]   remove everything (processes, netns, links, routes, and the cluster dir unless
#                              --keep); idempotent, also after a partial up or after processes were killed
#
# Layout (documentation ranges only; nothing is routed outside these namespaces), NET being $FAASD_CLUSTER_NET:
#   netns faasd-router   bridge br-faasd NET.1/24; BIRD (AS 64500, one eBGP session per host, ECMP into the kernel
#                        table); etcd on http://NET.1:2379; docker-registry on http://NET.1:5000
#   netns faasd-hostI    eth0 NET.(10+I)/24 on the bridge, default via NET.1; its own containerd; faasd (API
#                        NET.(10+I):8080, function IPs from 198.51.100.0/24), which runs BIRD (AS 64500+I) with the
#                        operator fragment hostI/bird-operator.conf written here
#   root netns           veth faasd-cl0 NET.2/24 on the bridge, route 198.51.100.0/24 via NET.1
# NET is 203.0.113 by default, or 192.0.2 (the other documentation /24 not used for functions). `up` refuses to start
# when the machine already routes NET.0/24 or 198.51.100.0/24 itself (some hosts' own uplink is in 192.0.2.0/24).
#
# Everything else lives under $FAASD_CLUSTER_DIR (default /var/lib/faasd-cluster): per process a log and a pid file,
# `hosts` (one line per running host: NAME API-URL) and `env` (the router's URLs as shell assignments).
#
# FAASD_CLUSTER_DRY=1 starts everything but faasd, and starts each host's BIRD itself with an empty faasd_functions
# static protocol (what faasd's BirdAnnouncer writes before it announces anything). DENO overrides the deno binary;
# FAASD_CLUSTER_TIMEOUT (seconds, default 60) bounds each wait for a daemon or a BGP session.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$(realpath -m "${FAASD_CLUSTER_DIR:-/var/lib/faasd-cluster}")
DRY=${FAASD_CLUSTER_DRY:-0}

ROUTER_NS=faasd-router
HOST_NS_PREFIX=faasd-host
BRIDGE=br-faasd
ROOT_LINK=faasd-cl0 # the root namespace's end of its veth; the router's end is vr0
FUNCTION_POOL=198.51.100.0/24
ROUTER_AS=64500
API_PORT=8080
# set_net PREFIX: the cluster network NET.0/24 and the addresses derived from it.
set_net() {
  NET_PREFIX=$1
  ROUTER_IP=$NET_PREFIX.1
  ROOT_IP=$NET_PREFIX.2
  ETCD_URL=http://$ROUTER_IP:2379
  REGISTRY_URL=http://$ROUTER_IP:5000
}
# The network: as given, else the one a running cluster in $DIR uses, else 203.0.113 (up falls back to 192.0.2 when the
# machine routes 203.0.113.0/24 itself).
NET_GIVEN=${FAASD_CLUSTER_NET:-}
if [[ -z $NET_GIVEN && -r $DIR/env ]]; then NET_GIVEN=$(sed -n 's/^FAASD_CLUSTER_NET=//p' "$DIR/env"); fi
set_net "${NET_GIVEN:-203.0.113}"
MAX_HOSTS=200 # host I is NET.(10+I)
# BGP timers short enough for tests: a dead peer is noticed within the 3 s hold time, and a session that went down
# (error) is retried after 1-2 s instead of BIRD's default 60-300 s.
BGP_TIMERS='hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;'
# How long a killed host stays a member (its etcd lease's TTL): short here, so that tests see it expire.
HOST_TTL=${FAASD_CLUSTER_HOST_TTL:-5s}
READY_TIMEOUT=${FAASD_CLUSTER_TIMEOUT:-60} # seconds, per thing waited for

log() { echo "cluster: $*" >&2; }
die() {
  echo "cluster: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (network namespaces, veths, routes)"; }

need_tools() {
  local missing=() tool
  local tools=(ip bird birdc etcd docker-registry containerd ctr runc setpriv setsid nsenter curl realpath findmnt)
  [[ $DRY == 1 ]] || tools+=("$DENO")
  for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian packages iproute2 bird2 etcd-server \
docker-registry containerd runc util-linux curl; deno: tools/setup.sh)"
}

DENO=${DENO:-$(command -v deno || echo "$REPO/.tools/node_modules/.bin/deno")}

host_ns() { echo "$HOST_NS_PREFIX$1"; }
host_ip() { echo "$NET_PREFIX.$((10 + $1))"; }
host_dir() { echo "$DIR/host$1"; }
ns_exists() { [[ -e /run/netns/$1 ]]; }

# Indices of the hosts this cluster has had (their dirs), ascending.
host_indices() {
  local d
  for d in "$DIR"/host*; do
    if [[ -d $d && ${d##*/host} =~ ^[0-9]+$ ]]; then echo "${d##*/host}"; fi
  done | sort -n
}

# Whether the process in pid file $1 runs and is ours: its command line names the cluster dir (guards against a
# reused pid).
alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR"
}

# start NETNS PIDFILE LOGFILE COMMAND...: runs COMMAND in NETNS, detached (own session, stdio to the log), unless the
# pid file names a live process. nsenter, not `ip netns exec`: that one mounts a fresh /sys, without the cgroup
# filesystems faasd and runc need. `setsid` (not a group leader here) and nsenter exec, so $! is the daemon.
start() {
  local ns=$1 pidfile=$2 logfile=$3
  shift 3
  if alive "$pidfile"; then return 0; fi
  setsid nsenter --net="/run/netns/$ns" -- "$@" </dev/null >>"$logfile" 2>&1 &
  local pid=$! tries=0
  echo "$pid" >"$pidfile"
  # Until the child has exec'd, its command line is this script's and alive() would call it dead (seen on a loaded
  # CI machine): wait for the exec, or for the child to end (a zombie's command line is empty; bounded either way).
  while ! alive "$pidfile" && kill -0 "$pid" 2>/dev/null && ((++tries <= 300)); do sleep 0.01; done
}

# wait_for WHAT PIDFILE LOGFILE COMMAND...: polls COMMAND until it succeeds; fails with the log's tail when the
# process dies or after READY_TIMEOUT seconds.
wait_for() {
  local what=$1 pidfile=$2 logfile=$3 deadline=$((SECONDS + READY_TIMEOUT))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pidfile"; then
      tail -n 30 "$logfile" >&2 2>/dev/null || true
      die "$what exited (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logfile" >&2 2>/dev/null || true
      die "$what not ready within ${READY_TIMEOUT}s (log: $logfile)"
    fi
    sleep 0.1
  done
}

# Every process in netns $1 and all their descendants (a container left by a killed shim has its own netns).
ns_process_tree() {
  local roots
  roots=$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')
  [[ -n $roots ]] || return 0
  ps -e -o pid=,ppid= | awk -v roots="$roots" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) mark[r[i]] = 1
      do { changed = 0; for (i in pids) { p = pids[i]; if (!(p in mark) && (parent[p] in mark)) { mark[p] = 1; changed = 1 } } } while (changed)
      for (p in mark) print p
    }'
}

# Kills (SIGKILL) everything in netns $1 and waits until it is gone, then deletes the netns.
kill_ns() {
  local ns=$1 pids tries=0
  ns_exists "$ns" || return 0
  while pids=$(ns_process_tree "$ns") && [[ -n $pids ]]; do
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    ((++tries <= 100)) || die "processes in $ns survive SIGKILL: ${pids//$'\n'/ }"
    sleep 0.05
  done
  ip netns del "$ns"
}

# Unmounts what is mounted under dir $1 (containerd's snapshots, the shims' bundles), deepest first.
unmount_under() {
  findmnt -rn -o TARGET | { grep -F "$1/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
}

# Removes the cgroups faasd made for host $1's containers (its parent is /faasd-hostI), empty once they are killed.
remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/"faasd-host$1" /sys/fs/cgroup/*/"faasd-host$1"; do
    if [[ -d $d ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

# Removes the runc state root of host $1's containerd namespace (faasd-hostI): its shims are gone with the netns,
# so what runc or faasd-runc recorded there names nothing that runs.
remove_runc_root() {
  rm -rf -- "/run/containerd/runc/faasd-host$1"
}

sysctl_in() { ip netns exec "$1" sysctl -qw "${@:2}" >/dev/null; }

# Refuses to go on when the machine already routes one of the cluster's ranges outside it (an uplink, a VPN): the
# root namespace's veth and route would shadow those, and probes meant for the router would leave the machine.
# net_clashes PREFIX: what the machine routes in PREFIX outside the cluster (empty: nothing).
net_clashes() {
  { ip -4 route show table all root "$1"; ip -4 route show table all match "$1" | grep -v '^default'; } |
    grep -Ev "dev $ROOT_LINK( |\$)" || true
}

check_root_ranges() {
  local prefix clash
  if [[ -z $NET_GIVEN && -n $(net_clashes "$NET_PREFIX.0/24") && -z $(net_clashes 192.0.2.0/24) ]]; then
    log "this machine routes $NET_PREFIX.0/24 itself: the cluster network is 192.0.2.0/24"
    set_net 192.0.2
  fi
  for prefix in "$NET_PREFIX.0/24" "$FUNCTION_POOL"; do
    clash=$(net_clashes "$prefix")
    [[ -z $clash ]] || die "this machine already routes $prefix outside the cluster:
$clash
set FAASD_CLUSTER_NET to the other documentation /24 (203.0.113 or 192.0.2)"
  done
}

# --- router -------------------------------------------------------------------------------------------------------

setup_router_net() {
  ns_exists "$ROUTER_NS" || ip netns add "$ROUTER_NS"
  ip -n "$ROUTER_NS" link set lo up
  ip -n "$ROUTER_NS" link show "$BRIDGE" >/dev/null 2>&1 ||
    ip -n "$ROUTER_NS" link add "$BRIDGE" type bridge forward_delay 0
  ip -n "$ROUTER_NS" addr replace "$ROUTER_IP/24" dev "$BRIDGE"
  ip -n "$ROUTER_NS" link set "$BRIDGE" up
  # ECMP that spreads connections (hash on ports); no ICMP redirects: the root namespace and the hosts share the
  # bridge, and a redirect would send the client straight to one host, past the router's multipath route.
  sysctl_in "$ROUTER_NS" net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
    net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
    net.ipv4.conf."$BRIDGE".send_redirects=0

  # The root namespace's way in: a client on the machine reaches function IPs (through the router) and host APIs.
  if ! ip link show "$ROOT_LINK" >/dev/null 2>&1; then
    ip link add "$ROOT_LINK" type veth peer name vr0 netns "$ROUTER_NS"
  fi
  ip -n "$ROUTER_NS" link set vr0 master "$BRIDGE" up
  sysctl -qw net.ipv4.conf."$ROOT_LINK".accept_redirects=0 >/dev/null
  ip addr replace "$ROOT_IP/24" dev "$ROOT_LINK"
  ip link set "$ROOT_LINK" up
  ip route replace "$FUNCTION_POOL" via "$ROUTER_IP" dev "$ROOT_LINK"
}

write_router_bird_conf() {
  local i conf=$DIR/router/bird.conf
  {
    cat <<EOF
# The cluster's router (written by tools/cluster.sh): one eBGP session per host; the function /32s they announce go
# into the kernel table, equal paths merged into one multipath route.
log stderr all;
router id $ROUTER_IP;

protocol device {}

protocol kernel {
  ipv4 {
    import none;
    export where source = RTS_BGP;
  };
  merge paths on;
}

template bgp faasd_host {
  local $ROUTER_IP as $ROUTER_AS;
  $BGP_TIMERS
  ipv4 {
    import all;
    export none;
  };
}
EOF
    for i in $(host_indices); do
      printf '\nprotocol bgp host%s from faasd_host {\n  neighbor %s as %s;\n}\n' "$i" "$(host_ip "$i")" $((ROUTER_AS + i))
    done
  } >"$conf.tmp"
  mv "$conf.tmp" "$conf"
}

# An HTTP GET that succeeds; never through a proxy from the environment (these addresses exist only here).
probe() { curl -sf --noproxy '*' --max-time 2 "$1"; }

birdc_ok() { birdc -s "$1" show status | grep -q "Daemon is up and running"; }

start_etcd() {
  local r=$DIR/router
  start "$ROUTER_NS" "$r/etcd.pid" "$r/etcd.log" etcd --name faasd-router --data-dir "$r/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster faasd-router=http://127.0.0.1:2380
}

start_router() {
  local r=$DIR/router
  mkdir -p "$r/etcd" "$r/registry"
  write_router_bird_conf
  if alive "$r/bird.pid"; then
    birdc -s "$r/bird.ctl" configure | grep -Eq "Reconfigur" || die "router BIRD refused its configuration"
  else
    start "$ROUTER_NS" "$r/bird.pid" "$r/bird.log" bird -f -c "$r/bird.conf" -s "$r/bird.ctl"
  fi

  start_etcd

  cat >"$r/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $r/registry
  delete:
    enabled: true
http:
  addr: $ROUTER_IP:5000
EOF
  start "$ROUTER_NS" "$r/registry.pid" "$r/registry.log" docker-registry serve "$r/registry.yml"

  wait_for "router BIRD" "$r/bird.pid" "$r/bird.log" birdc_ok "$r/bird.ctl"
  wait_for etcd "$r/etcd.pid" "$r/etcd.log" probe "$ETCD_URL/health"
  wait_for registry "$r/registry.pid" "$r/registry.log" probe "$REGISTRY_URL/v2/"
}

# --- hosts --------------------------------------------------------------------------------------------------------

setup_host_net() {
  local i=$1 ns ip
  ns=$(host_ns "$i")
  ip=$(host_ip "$i")
  ns_exists "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link show eth0 >/dev/null 2>&1 || ip -n "$ROUTER_NS" link add "vh$i" type veth peer name eth0 netns "$ns"
  ip -n "$ROUTER_NS" link set "vh$i" master "$BRIDGE" up
  ip -n "$ns" addr replace "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$ROUTER_IP"
  sysctl_in "$ns" net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
}

write_host_files() {
  local i=$1 h ip
  h=$(host_dir "$i")
  ip=$(host_ip "$i")
  mkdir -p "$h/containerd/root" "$h/containerd/state" "$h/faasd"
  cat >"$h/bird-operator.conf" <<EOF
# Host $i's part of its BIRD configuration (written by tools/cluster.sh, passed to faasd as --bird-config). faasd
# includes it from the file it writes, which adds the static protocol faasd_functions (one /32 per function IP).
router id $ip;

protocol device {}

protocol bgp upstream {
  local $ip as $((ROUTER_AS + i));
  neighbor $ROUTER_IP as $ROUTER_AS;
  $BGP_TIMERS
  ipv4 {
    import none;
    export where proto = "faasd_functions";
  };
}
EOF
  local q='"'
  cat >"$h/containerd/config.toml" <<EOF
version = 2
root = $q$h/containerd/root$q
state = $q$h/containerd/state$q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = $q$h/containerd/containerd.sock$q

[ttrpc]
  address = $q$h/containerd/containerd.sock.ttrpc$q

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = $q$h/containerd/root/opt$q
EOF
}

start_host() {
  local i=$1 h ns ip
  h=$(host_dir "$i")
  ns=$(host_ns "$i")
  ip=$(host_ip "$i")
  setup_host_net "$i"
  write_host_files "$i"
  start "$ns" "$h/containerd.pid" "$h/containerd.log" containerd --config "$h/containerd/config.toml" \
    --root "$h/containerd/root" --state "$h/containerd/state" --address "$h/containerd/containerd.sock"
  wait_for "host$i containerd" "$h/containerd.pid" "$h/containerd.log" \
    ctr --address "$h/containerd/containerd.sock" version

  if [[ $DRY == 1 ]]; then
    printf 'log stderr all;\ninclude "%s";\n\nprotocol static faasd_functions {\n  ipv4;\n}\n' \
      "$h/bird-operator.conf" >"$h/bird.conf"
    start "$ns" "$h/bird.pid" "$h/bird.log" bird -f -c "$h/bird.conf" -s "$h/bird.ctl"
    wait_for "host$i BIRD" "$h/bird.pid" "$h/bird.log" birdc_ok "$h/bird.ctl"
  else
    # Its own containerd namespace, hence its own parent cgroup (/faasd-hostI): the hosts share this machine's cgroups.
    start "$ns" "$h/faasd.pid" "$h/faasd.log" "$DENO" run --allow-all "$REPO/main.ts" \
      --api "$ip:$API_PORT" --state-dir "$h/faasd" --containerd "$h/containerd/containerd.sock" \
      --namespace "faasd-host$i" --ip-pool "$FUNCTION_POOL" --port 80 --cluster "etcd://$ROUTER_IP:2379" \
      --registry "$REGISTRY_URL" --host-name "host$i" --host-ttl "$HOST_TTL" --bird-config "$h/bird-operator.conf"
    wait_for "host$i faasd" "$h/faasd.pid" "$h/faasd.log" probe "http://$ip:$API_PORT/healthz"
  fi
}

session_established() { birdc -s "$DIR/router/bird.ctl" show protocols "host$1" | grep -q Established; }

wait_sessions() {
  local i
  for i in "$@"; do
    wait_for "BGP session to host$i" "$DIR/router/bird.pid" "$DIR/router/bird.log" session_established "$i"
  done
}

write_index_files() {
  local i
  for i in $(host_indices); do
    if ns_exists "$(host_ns "$i")"; then echo "host$i http://$(host_ip "$i"):$API_PORT"; fi
  done >"$DIR/hosts.tmp"
  mv "$DIR/hosts.tmp" "$DIR/hosts"
  cat >"$DIR/env" <<EOF
FAASD_CLUSTER_NET=$NET_PREFIX
FAASD_CLUSTER_ROUTER_IP=$ROUTER_IP
FAASD_CLUSTER_ETCD=$ETCD_URL
FAASD_CLUSTER_REGISTRY=$REGISTRY_URL
FAASD_CLUSTER_ROUTER_NS=$ROUTER_NS
FAASD_CLUSTER_FUNCTION_POOL=$FUNCTION_POOL
EOF
}

# --- commands -----------------------------------------------------------------------------------------------------

cmd_up() {
  local n=${1:-}
  if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > MAX_HOSTS)); then die "usage: cluster.sh up N (1 <= N <= $MAX_HOSTS)"; fi
  need_tools
  check_root_ranges
  mkdir -p "$DIR"
  touch "$DIR/.faasd-cluster" # marks the dir as ours, for `down` to remove
  local i
  for i in $(seq 1 "$n"); do mkdir -p "$(host_dir "$i")"; done
  setup_router_net
  start_router
  for i in $(seq 1 "$n"); do start_host "$i"; done
  write_index_files
  # shellcheck disable=SC2046
  wait_sessions $(seq 1 "$n")
  log "up: $n host(s); hosts in $DIR/hosts"
}

cmd_add() {
  need_tools
  if ! ns_exists "$ROUTER_NS" || ! alive "$DIR/router/bird.pid"; then die "no cluster runs (from $DIR): run up first"; fi
  local i last
  last=$(host_indices | tail -n 1)
  i=$((${last:-0} + 1))
  ((i <= MAX_HOSTS)) || die "at most $MAX_HOSTS hosts"
  mkdir -p "$(host_dir "$i")"
  start_router # adds the new host's BGP session
  start_host "$i"
  write_index_files
  wait_sessions "$i"
  echo "http://$(host_ip "$i"):$API_PORT"
}

cmd_kill() {
  local i=${1:-}
  [[ $i =~ ^[1-9][0-9]*$ ]] || die "usage: cluster.sh kill I"
  ns_exists "$(host_ns "$i")" || die "host$i does not run"
  kill_ns "$(host_ns "$i")"
  unmount_under "$(host_dir "$i")"
  remove_cgroups "$i"
  remove_runc_root "$i"
  write_index_files
  log "killed host$i"
}

cmd_etcd() {
  local r=$DIR/router
  ns_exists "$ROUTER_NS" || die "no cluster runs (from $DIR): run up first"
  case ${1:-} in
  stop)
    if alive "$r/etcd.pid"; then
      local pid
      pid=$(<"$r/etcd.pid")
      kill -KILL "$pid"
      while [[ -e /proc/$pid ]]; do sleep 0.05; done
    fi
    log "etcd stopped"
    ;;
  start)
    start_etcd
    wait_for etcd "$r/etcd.pid" "$r/etcd.log" probe "$ETCD_URL/health"
    log "etcd started"
    ;;
  *) die "usage: cluster.sh etcd stop|start" ;;
  esac
}

cmd_down() {
  local keep=0 ns
  [[ ${1:-} == --keep ]] && keep=1
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^(${HOST_NS_PREFIX}[0-9]+|$ROUTER_NS)\$" || true); do
    kill_ns "$ns"
  done
  # Processes of ours that somehow left their netns (e.g. started by hand).
  local f
  for f in "$DIR"/*.pid "$DIR"/*/*.pid; do
    if [[ -e $f ]] && alive "$f"; then kill -9 "$(<"$f")" 2>/dev/null || true; fi
  done
  # The root veth went with its peer in the router netns, and its route with it; this covers a half-made one.
  ! ip link show "$ROOT_LINK" >/dev/null 2>&1 || ip link del "$ROOT_LINK"
  ! ip route show "$FUNCTION_POOL" | grep -q . || ip route del "$FUNCTION_POOL"
  local i
  for i in $(host_indices); do
    remove_cgroups "$i"
    remove_runc_root "$i"
  done
  if [[ -d $DIR ]]; then
    unmount_under "$DIR"
    if ((keep == 0)); then
      [[ -e $DIR/.faasd-cluster ]] || die "$DIR was not made by cluster.sh (no .faasd-cluster): not removing it"
      rm -rf "$DIR"
    else
      rm -f "$DIR"/*.pid "$DIR"/*/*.pid "$DIR/hosts"
    fi
  fi
  log "down"
}

cmd_status() {
  if ! ns_exists "$ROUTER_NS"; then
    echo "no cluster runs"
    return 0
  fi
  echo "cluster dir: $DIR"
  local f name
  for f in "$DIR"/router/*.pid "$DIR"/host*/*.pid; do
    [[ -e $f ]] || continue
    name=${f#"$DIR"/}
    if alive "$f"; then echo "  ${name%.pid}: running (pid $(<"$f"))"; else echo "  ${name%.pid}: not running"; fi
  done
  local i
  for i in $(host_indices); do
    ns_exists "$(host_ns "$i")" || echo "  host$i: killed (no netns)"
  done
  echo "hosts:"
  sed 's/^/  /' "$DIR/hosts" 2>/dev/null || true
  if alive "$DIR/router/bird.pid"; then
    echo "BGP sessions (router):"
    birdc -s "$DIR/router/bird.ctl" show protocols | awk '$2 == "BGP" { print "  " $0 }'
  fi
  echo "function routes (router's kernel table):"
  ip -n "$ROUTER_NS" route show proto bird | sed 's/^/  /'
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  up | add | kill | down | status | etcd) need_root ;;
  -h | --help | help)
    usage
    return 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
  [[ -n $DIR && $DIR != / ]] || die "FAASD_CLUSTER_DIR must not be /"
  [[ $NET_PREFIX == 203.0.113 || $NET_PREFIX == 192.0.2 ]] ||
    die "FAASD_CLUSTER_NET must be 203.0.113 or 192.0.2 (documentation ranges only), not $NET_PREFIX"
  cd "$REPO" # deno finds deno.json (import map, lock) from here
  "cmd_$cmd" "$@"
}

main "$@"
