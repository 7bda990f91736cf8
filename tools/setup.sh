#!/usr/bin/env bash
# Installs what faasd needs on Debian 12, as root, where missing: containerd, runc, podman and nftables from Debian, the
# protobuf sources the containerd client is generated from, gcc for the example and test handlers (and libseccomp for
# faasd-runc), and Deno from npm (into .tools/, beside the project). Then generates the containerd client. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(containerd runc podman iproute2 nftables golang-github-containers-common gcc libc6-dev libseccomp-dev golang-go curl ca-certificates python3
  golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev
  etcd-server etcd-client docker-registry bird2 golang-etcd-server-dev golang-github-gogo-googleapis-dev)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

DENO_VERSION=2.9.6
if [[ "$(.tools/node_modules/.bin/deno --version 2>/dev/null | head -1)" != "deno $DENO_VERSION"* ]]; then
  echo "setup: installing deno $DENO_VERSION from npm into .tools/" >&2
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION" >/dev/null
fi
export PATH="$PWD/.tools/node_modules/.bin:$PATH"
deno task -q gen >/dev/null 2>&1 || deno task gen
