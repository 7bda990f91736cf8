#!/bin/sh
# Builds localhost/{{name}}:latest without pulling anything: the host's Go (1.19 or later) compiles a static binary
# (CGO_ENABLED=0, no external modules) and podman puts it into a FROM scratch image. Override the engine with PODMAN
# (e.g. PODMAN=docker) and the tag with TAG.
set -eu
cd "$(dirname "$0")"
PODMAN=${PODMAN:-podman}
TAG=${TAG:-localhost/{{name}}:latest}

# Go keeps its build cache and module path under $HOME; without a HOME (go env says "off" or nothing), use /tmp.
case "$(go env GOCACHE 2>/dev/null || true)" in
"" | off) export GOCACHE="${TMPDIR:-/tmp}/go-build-cache" ;;
esac
[ -n "$(go env GOPATH 2>/dev/null || true)" ] || export GOPATH="${TMPDIR:-/tmp}/go-path"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$context/handler" .
$PODMAN build -f Containerfile.local -t "$TAG" "$context"
echo "built $TAG; deploy it with: deno task faas new $TAG --name {{name}}"
