#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine, as root: installs what is missing, starts containerd (the system one,
# or a private one under .state/ when none runs), starts faasd in the background, builds the example handler with
# gcc and podman, deploys it with `faas new`, prints its IP and curls it.
#   tools/quickstart.sh        start (again) and deploy
#   tools/quickstart.sh stop   stop faasd and the private containerd
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.state/quickstart"
API=127.0.0.1:8080

stop_pid() { [[ -f "$1" ]] && kill "$(cat "$1")" 2>/dev/null && sleep 1; rm -f "$1"; }
if [[ "${1:-}" == stop ]]; then
  stop_pid "$STATE/faasd.pid"
  stop_pid "$STATE/containerd.pid"
  echo "stopped"
  exit 0
fi

tools/setup.sh
export PATH="$PWD/.tools/node_modules/.bin:$PATH"
mkdir -p "$STATE"

SOCK=/run/containerd/containerd.sock
if ! ctr --address "$SOCK" version >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl start containerd 2>/dev/null && sleep 1 &&
    ctr --address "$SOCK" version >/dev/null 2>&1; then
    echo "quickstart: started the system containerd" >&2
  else
    SOCK="$STATE/containerd/containerd.sock"
    if ! ctr --address "$SOCK" version >/dev/null 2>&1; then
      mkdir -p "$STATE/containerd"
      cat >"$STATE/containerd/config.toml" <<TOML
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
TOML
      nohup containerd --config "$STATE/containerd/config.toml" >"$STATE/containerd.log" 2>&1 &
      echo $! >"$STATE/containerd.pid"
      for _ in $(seq 50); do ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.2; done
      echo "quickstart: started a private containerd on $SOCK" >&2
    fi
  fi
fi

if ! curl -fsS "http://$API/healthz" >/dev/null 2>&1; then
  nohup deno task faasd --api "$API" --state-dir "$STATE/faasd" --containerd "$SOCK" >"$STATE/faasd.log" 2>&1 &
  echo $! >"$STATE/faasd.pid"
  for _ in $(seq 100); do curl -fsS "http://$API/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "http://$API/healthz" >/dev/null || { cat "$STATE/faasd.log"; exit 1; }
  echo "quickstart: faasd is running (log: $STATE/faasd.log)" >&2
fi

examples/hello-c/build-local.sh >/dev/null
IP=$(deno task -q faas --url "http://$API" new localhost/hello-c:latest --name hello)
echo "hello is deployed at $IP"
echo "\$ curl http://$IP/"
curl -sS "http://$IP/"
