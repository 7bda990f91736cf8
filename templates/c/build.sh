#!/bin/sh
# Builds localhost/{{name}}:latest without pulling anything: the host's gcc compiles a static binary and podman puts
# it into a FROM scratch image. Override the engine with PODMAN (e.g. PODMAN=docker) and the tag with TAG.
set -eu
cd "$(dirname "$0")"
PODMAN=${PODMAN:-podman}
TAG=${TAG:-localhost/{{name}}:latest}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
gcc -static -O2 -s -Wall -o "$context/handler" handler.c
$PODMAN build -f Containerfile.local -t "$TAG" "$context"
echo "built $TAG; deploy it with: deno task faas new $TAG --name {{name}}"
