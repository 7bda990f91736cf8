#!/bin/sh
# Builds localhost/hello-c:latest without pulling anything: the host's gcc compiles a static binary and podman
# puts it into a FROM scratch image. Override the engine with PODMAN (e.g. PODMAN=docker) and the tag with TAG.
set -eu
cd "$(dirname "$0")"
PODMAN=${PODMAN:-podman}
TAG=${TAG:-localhost/hello-c:latest}

gcc -static -O2 -s -o handler handler.c
trap 'rm -f handler' EXIT
$PODMAN build -f Containerfile.local -t "$TAG" .
echo "built $TAG — deploy it with: deno task faas new $TAG --name hello-c"
