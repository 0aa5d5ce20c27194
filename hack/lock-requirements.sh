#!/usr/bin/env bash
# Re-lock the images' requirements: every package pinned, with the sha256 of every file PyPI
# holds for that version, for CPython 3.11 on Linux (the images' Python, x86_64 and aarch64):
#
#   hack/lock-requirements.sh                 # after editing a requirements.txt range
#   hack/lock-requirements.sh --upgrade       # move every pin to the newest version in range
#   hack/lock-requirements.sh --upgrade-package keras
#
#   trainer/requirements.txt  -> trainer/requirements.lock      (trainer image, CI's .venv)
#   operator/requirements.txt -> operator/requirements.lock     (operator image, CI's .venv)
#   trainer/requirements-gpu.txt -> trainer/requirements-gpu.lock (the trainer-gpu layer)
#   requirements-build.txt    -> requirements-build.lock        (setuptools, building the images)
#
# The images install only from these files (`pip install --require-hashes`), so a compromised
# or re-uploaded file on the index fails the build instead of landing in an image. Existing pins
# are kept unless a range excludes them or --upgrade asks (uv reads the old lock as preferences).
# The other locks are constrained by the trainer lock, so a package they share has one version
# in every image and in CI's .venv. Each file is resolved for both architectures and must come
# out the same; tests/unit/test_requirements_lock.py fails when a range and its lock disagree.
# The resolver is uv, pinned below, in a virtual environment of its own outside the project.
set -euo pipefail

uv_version=0.13.10
python_version=3.11
glibc=2_36 # Debian bookworm's, as hack/build-images.sh builds on
arches=(x86_64 aarch64)

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
tools=$cache/tools/uv-$uv_version
if [ ! -x "$tools/bin/uv" ]; then
  python3 -m venv "$tools.tmp"
  "$tools.tmp/bin/pip" install --quiet --disable-pip-version-check "uv==$uv_version"
  rm -rf "$tools" && mv "$tools.tmp" "$tools"
fi
uv=$tools/bin/uv

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

lock() { # output input... [-c constraint]: resolve for each architecture, keep the first
  local out=$1 arch first=
  shift
  for arch in "${arches[@]}"; do
    local dest=$out
    if [ -n "$first" ]; then
      dest=$scratch/$(basename "$out").$arch
      cp "$out" "$dest" # same preferences as the first architecture
    fi
    "$uv" pip compile --quiet --generate-hashes --no-strip-extras \
      --python-version "$python_version" --python-platform "$arch-manylinux_$glibc" \
      --custom-compile-command "hack/lock-requirements.sh" \
      "${upgrade[@]}" "$@" --output-file "$dest"
    if [ -n "$first" ] && ! diff -u "$out" "$dest"; then
      echo "error: $out resolves differently on $arch than on $first" >&2
      exit 1
    fi
    first=${first:-$arch}
  done
  echo "locked $out ($(grep -c '^[a-z0-9]' "$out") packages)"
}

upgrade=("$@")
lock trainer/requirements.lock trainer/requirements.txt
lock operator/requirements.lock operator/requirements.txt -c trainer/requirements.lock
lock trainer/requirements-gpu.lock trainer/requirements-gpu.txt -c trainer/requirements.lock
lock requirements-build.lock requirements-build.txt -c trainer/requirements.lock
