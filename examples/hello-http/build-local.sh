#!/bin/sh
# Builds localhost/hello-http:latest without pulling anything: the host's Go builds a static binary and podman puts it
# into a FROM scratch image. Override the engine with PODMAN (e.g. PODMAN=docker) and the tag with TAG.
set -eu
cd "$(dirname "$0")"
PODMAN=${PODMAN:-podman}
TAG=${TAG:-localhost/hello-http:latest}
# Go wants a cache; a shell without HOME (systemd, CI) has none.
if [ -z "${HOME:-}" ] || [ "$(go env GOCACHE 2>/dev/null)" = "off" ]; then
  export GOCACHE=/tmp/faasd-go-cache GOPATH=/tmp/faasd-go-path
fi
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o hello-http .
trap 'rm -f hello-http' EXIT
$PODMAN build -f Containerfile.local -t "$TAG" .
echo "built $TAG — deploy it with: deno task faas new $TAG --name hello-http --http-port 8080"
