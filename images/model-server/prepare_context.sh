#!/usr/bin/env bash
# Assemble the model-server build context (Dockerfile, app code, every wheel) so the image builds with no network.
#
# usage: images/model-server/prepare_context.sh CONTEXT_DIR
# env: WHEEL_CACHE  PyPI wheels, downloaded once per requirements.txt (default /var/cache/drtool/wheels)
#      TORCH_WHEEL  the local CPU torch wheel (default /opt/wheels/<name pinned in requirements.txt>)
#      PYTHON       a Python 3 with pip for `pip download` (default: the repo's .venv, else python3)
# The context holds: Dockerfile, wheels/ (requirements.txt + every wheel it pins), app/ (server.py, gpu_health.py,
# healthcheck.py, drtool/model/*.py copied from the repo: the model code has one source).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 CONTEXT_DIR" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CONTEXT=$1
REQ=$HERE/requirements.txt
WHEEL_CACHE=${WHEEL_CACHE:-/var/cache/drtool/wheels}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

die() { echo "prepare_context: $*" >&2; exit 1; }
log() { echo "prepare_context: $*" >&2; }

TORCH_PIN=$(sed -n 's/^torch==\([^ ]*\) .*/\1/p' "$REQ")
TORCH_SHA=$(sed -n 's/^torch==[^ ]* --hash=sha256:\([0-9a-f]\{64\}\).*/\1/p' "$REQ")
[ -n "$TORCH_PIN" ] && [ -n "$TORCH_SHA" ] || die "$REQ must pin torch==VERSION --hash=sha256:HEX"
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-${TORCH_PIN}-cp311-cp311-manylinux_2_28_x86_64.whl}
[ -f "$TORCH_WHEEL" ] || die "torch wheel $TORCH_WHEEL not found (set TORCH_WHEEL)"

# PyPI wheels: one cache directory per requirements.txt content, marked complete only after every hash checked.
KEY=$(sha256sum "$REQ" | cut -c1-16)
DL=$WHEEL_CACHE/$KEY
if [ ! -f "$DL/.complete" ]; then
  log "downloading pinned wheels into $DL"
  rm -rf "$DL.tmp"
  mkdir -p "$DL.tmp"
  grep -v '^torch==' "$REQ" >"$DL.tmp/pypi-requirements.txt"
  # Wheels for the image's Python (Debian 12: CPython 3.11, glibc 2.36, x86_64), whatever runs this script.
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    -d "$DL.tmp" -r "$DL.tmp/pypi-requirements.txt" >"$DL.tmp/pip.log" 2>&1 || {
    tail -n 20 "$DL.tmp/pip.log" >&2
    die "pip download failed (log: $DL.tmp/pip.log)"
  }
  touch "$DL.tmp/.complete"
  rm -rf "$DL"
  mv "$DL.tmp" "$DL"
fi

actual=$(sha256sum "$TORCH_WHEEL" | cut -d' ' -f1)
[ "$actual" = "$TORCH_SHA" ] || die "$TORCH_WHEEL has sha256 $actual; requirements.txt pins $TORCH_SHA"

# Hard links when the context shares a filesystem with the cache (the torch wheel alone is ~190 MB), else copies.
link_or_copy() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

mkdir -p "$CONTEXT"
rm -rf "${CONTEXT:?}/app" "${CONTEXT:?}/wheels" "${CONTEXT:?}/Dockerfile"
mkdir -p "$CONTEXT/wheels" "$CONTEXT/app/drtool/model"
cp "$HERE/Dockerfile" "$CONTEXT/Dockerfile"
cp "$REQ" "$CONTEXT/wheels/requirements.txt"
for whl in "$DL"/*.whl "$TORCH_WHEEL"; do
  link_or_copy "$whl" "$CONTEXT/wheels/$(basename "$whl")"
done
cp "$HERE/server.py" "$HERE/gpu_health.py" "$HERE/healthcheck.py" "$CONTEXT/app/"
# drtool/ gets no __init__.py: in the image it is a namespace package holding only the model code.
cp "$REPO"/drtool/model/*.py "$CONTEXT/app/drtool/model/"
log "context ready in $CONTEXT ($(du -sm "$CONTEXT" | cut -f1) MB)"
echo "$CONTEXT"
