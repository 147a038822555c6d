#!/usr/bin/env bash
# Build the offline Debian base image: debootstrap once into a cached rootfs tarball, import it into an engine.
#
# usage: images/base/build.sh ENGINE_URL TAG [CACHE_DIR]
#   ENGINE_URL  Docker engine, e.g. unix:///run/docker.sock
#   TAG         image to create, e.g. drtool-base:bookworm
#   CACHE_DIR   where the rootfs tarball is kept (default /var/cache/drtool/base)
# env: MIRROR (default: this machine's apt mirror for the suite), DOCKER (docker CLI, default `docker`).
# Prints progress on stderr and the base image id alone on stdout. Needs root (debootstrap) on a cold cache.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 ENGINE_URL TAG [CACHE_DIR]" >&2
  exit 2
fi
ENGINE_URL=$1
TAG=$2
CACHE_DIR=${3:-/var/cache/drtool/base}
DOCKER=${DOCKER:-docker}

SUITE=bookworm            # its python3 is 3.11, which the cp311 torch wheel needs
VARIANT=minbase
PACKAGES=python3,python3-pip,ca-certificates,python3-prometheus-client
# Bump when the rootfs recipe below changes, so an old cached tarball is not reused.
RECIPE=1
LABEL_SUM=io.drtool.base.rootfs-sha256

log() { echo "base: $*" >&2; }

# The mirror this machine's apt already uses: the only Debian archive reachable offline-ish here.
apt_mirror() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; ok = 0; deb = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { line = $i; sub(/^URIs:[ \t]*/, "", line); uris = line }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
          if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
        }
        if (ok && deb && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
      }' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)
  fi
  echo "$uri"
}

KEY=$(printf '%s|%s|%s|%s' "$SUITE" "$VARIANT" "$PACKAGES" "$RECIPE" | sha256sum | cut -c1-12)
TARBALL="$CACHE_DIR/debian-$SUITE-$VARIANT-$KEY.tar"
mkdir -p "$CACHE_DIR"

# One builder at a time per cache: a second run waits, then finds the tarball made.
exec 9>"$CACHE_DIR/.lock"
flock 9

ROOT=""
cleanup() {
  if [ -n "$ROOT" ] && [ -d "$ROOT" ]; then
    # debootstrap mounts proc/sys in the target; unmount anything left before deleting.
    findmnt -rn -o TARGET | awk -v r="$ROOT" 'index($0, r) == 1' | sort -r | while read -r m; do
      umount -l "$m" || true
    done
    rm -rf --one-file-system "$ROOT"
  fi
  rm -f "$TARBALL.tmp"
}
trap cleanup EXIT

if [ -s "$TARBALL" ] && [ -s "$TARBALL.sha256" ]; then
  log "cached rootfs $TARBALL"
else
  MIRROR=${MIRROR:-$(apt_mirror)}
  [ -n "$MIRROR" ] || { echo "base: no apt mirror for $SUITE found; set MIRROR" >&2; exit 2; }
  command -v debootstrap >/dev/null || { echo "base: debootstrap is not installed" >&2; exit 2; }
  ROOT=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
  log "debootstrap $SUITE ($VARIANT, +$PACKAGES) from $MIRROR"
  start=$(date +%s)
  debootstrap --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 || {
    echo "base: debootstrap failed; last lines of $CACHE_DIR/debootstrap.log:" >&2
    tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
    exit 1
  }
  # Downloaded .debs and package lists are dead weight in an image that never runs apt.
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
    "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
  # The engine mounts its own /dev, /proc and /sys; device nodes in a layer only get in the way.
  rm -rf --one-file-system "${ROOT:?}"/dev/* "${ROOT:?}"/proc/* "${ROOT:?}"/sys/*
  tar --numeric-owner --xattrs --sort=name -C "$ROOT" -cf "$TARBALL.tmp" .
  sha256sum "$TARBALL.tmp" | cut -d' ' -f1 >"$TARBALL.sha256.tmp"
  mv "$TARBALL.tmp" "$TARBALL"
  mv "$TARBALL.sha256.tmp" "$TARBALL.sha256"
  log "rootfs tarball $(du -m "$TARBALL" | cut -f1) MB in $(( $(date +%s) - start )) s"
fi
SUM=$(cat "$TARBALL.sha256")

# A re-import makes a new image id (new creation time), which would void the model-server build cache:
# skip it when TAG already holds this very rootfs.
current=$("$DOCKER" -H "$ENGINE_URL" image inspect --format "{{ index .Config.Labels \"$LABEL_SUM\" }}" "$TAG" \
  2>/dev/null || true)
if [ "$current" = "$SUM" ]; then
  log "$TAG already holds rootfs $SUM"
else
  log "importing $TARBALL as $TAG"
  "$DOCKER" -H "$ENGINE_URL" import \
    --change "LABEL $LABEL_SUM=$SUM" \
    --change "LABEL io.drtool.base.suite=$SUITE io.drtool.base.packages=$PACKAGES" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$TAG" >/dev/null
fi
"$DOCKER" -H "$ENGINE_URL" image inspect --format '{{ .Id }}' "$TAG"
