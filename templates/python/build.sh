#!/bin/sh
# Builds localhost/{{name}}:latest without pulling anything: a FROM scratch image holding the host's Python (the
# interpreter, the shared libraries ldd lists for it, and the standard library without its tests, GUI modules and
# site-packages) and handler.py. Override the engine with PODMAN (e.g. PODMAN=docker), the tag with TAG and the
# interpreter with PYTHON. Extension modules needing libraries the interpreter itself does not (ssl, sqlite3, ctypes)
# are copied but cannot be imported.
set -eu
cd "$(dirname "$0")"
PODMAN=${PODMAN:-podman}
TAG=${TAG:-localhost/{{name}}:latest}
PYTHON=${PYTHON:-/usr/bin/python3}

python=$(readlink -f "$PYTHON")
[ -x "$python" ] || { echo "build.sh: no Python interpreter at $PYTHON" >&2; exit 1; }
stdlib=$("$python" -I -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/root

# Copies FILE (symlinks resolved) to the same path under root/, keeping mode and mtime.
copy() {
  mkdir -p "$root$(dirname "$1")"
  cp -L --preserve=mode,timestamps "$1" "$root$1"
}

# The interpreter at its real path, and /usr/bin/python3 leading to it (the ENTRYPOINT).
copy "$python"
if [ "$python" != /usr/bin/python3 ]; then
  mkdir -p "$root/usr/bin"
  ln -sf "$python" "$root/usr/bin/python3"
fi

# The shared libraries and the dynamic loader, at the paths ldd prints.
libs=$(ldd "$python")
if echo "$libs" | grep -q 'not found'; then
  echo "build.sh: ldd $python: a library is missing" >&2
  exit 1
fi
for lib in $(echo "$libs" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
  copy "$lib"
done

# The standard library with lib-dynload and the precompiled __pycache__ (mtimes kept, so the .pyc files stay valid),
# without tests, GUI modules, developer tools (pip's bootstrap, 2to3, pydoc's topics), third-party packages and
# config-* (files for building C extensions). Symlinks are followed; dangling ones are skipped.
mkdir -p "$root$stdlib"
(cd "$stdlib" && find -L . -mindepth 1 \
  \( -path ./test -o -path ./idlelib -o -path ./tkinter -o -path ./turtledemo -o -path ./ensurepip \
  -o -path ./lib2to3 -o -path ./pydoc_data -o -path ./site-packages -o -path ./dist-packages \
  -o -path './config-*' \) -prune -o -type f -print) |
  tar -C "$stdlib" -chf - -T - | tar -C "$root$stdlib" -xf -

cp handler.py "$context/handler.py"
$PODMAN build -f Containerfile.local -t "$TAG" "$context"
echo "built $TAG; deploy it with: deno task faas new $TAG --name {{name}}"
