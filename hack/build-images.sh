#!/usr/bin/env bash
# Build Berth's images with podman and cache them outside the repository as image archives:
#
#   hack/build-images.sh        # localhost/berth-operator:<appVersion>, localhost/berth-trainer:<appVersion>
#   hack/build-images.sh gpu    # localhost/berth-trainer:<appVersion>-gpu (several GB; not in CI)
#
# The tag is the chart's appVersion, so the chart's defaults name these images. Each image is
# keyed by a hash of its inputs (the Dockerfile, the sources, locks and pyproject files it
# copies, the base image's recipe, the tag) and saved as
# ${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}/images/berth-<target>-<hash>.tar
# (docker-archive: `podman load` and `ctr -n k8s.io images import` both read it), linked as
# .../images/berth-<target>.tar, and listed in .../images/current.json (ref, archive, hash) for
# hack/cluster.py. When the hash is unchanged nothing is built: an image missing from podman's
# storage is loaded from its archive, so a warm run takes seconds.
#
# A cold build needs no network inside the container: the base image comes from Debian packages
# (mmdebstrap, bookworm), and pip installs from a wheelhouse the host's own pip downloads first,
# with the host's index and CA settings, into .../wheelhouse/ (reused by every later build).
# The host downloads exactly the files of the hash-locked requirements (hack/lock-requirements.sh)
# with --require-hashes, the wheelhouse keeps only files whose sha256 some lock names, and the
# build installs with --require-hashes again: nothing unverified reaches an image. The base
# image is identified by the hash of its recipe (its tag, localhost/berth-python-base:<hash>),
# apt checks every Debian package it is made of against the suite's signed Release file, and
# each image records it (labels org.opencontainers.image.base.name and .base.digest).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

variant=${1:-cpu}
case $variant in
  cpu) targets=(operator trainer) ;;
  gpu) targets=(trainer-gpu) ;;
  all) targets=(operator trainer trainer-gpu) ;;
  *) echo "usage: $0 [cpu|gpu|all]" >&2; exit 2 ;;
esac

cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
images=$cache/images
mkdir -p "$images/base"
tag=$(sed -nE 's/^appVersion:[[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' charts/berth/Chart.yaml)
[ -n "$tag" ] || { echo "error: no appVersion in charts/berth/Chart.yaml" >&2; exit 1; }

# The base image's recipe: Debian bookworm's Python 3.11 with pip and venv, no docs or locales.
# Its glibc (2.36) and Python decide which wheels the host downloads for the build.
suite=bookworm
base_packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
base_options=(--variant=minbase "--include=$base_packages"
  --aptopt='Apt::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*')
wheel_python=3.11 wheel_glibc=2_36 arch=$(uname -m)
wheelhouse=$cache/wheelhouse/cp${wheel_python/./}-manylinux_${wheel_glibc}_$arch

# podman as the notes on this machine kind require: runc (crun refuses hybrid cgroups), cgroupfs
# (no systemd), and rlimits below the host's hard limits.
pod() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
ulimits=(--ulimit nofile=1024:4096 --ulimit nproc=1024:4096)

now() { date +%s.%N; }
took() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f s", end - start }'; }

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  # One apt-get at a time: `make prerequisites` runs this beside hack/install-node-deps.sh.
  (
    flock 9
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  ) 9>/tmp/berth-apt.lock
}

# The hash-locked requirements a target installs (the build lock: Berth's wheels, sdist-only
# packages), and every lock there is (what the wheelhouse may hold).
locks_of() {
  case $1 in
    operator) echo requirements-build.lock operator/requirements.lock ;;
    trainer) echo requirements-build.lock trainer/requirements.lock ;;
    trainer-gpu) echo requirements-build.lock trainer/requirements.lock trainer/requirements-gpu.lock ;;
  esac
}
all_locks=(requirements-build.lock trainer/requirements.lock trainer/requirements-gpu.lock
  operator/requirements.lock)

# Files a target's image is made of: what the Dockerfile copies (as .dockerignore allows).
sources() {
  local dirs=(trainer)
  [ "$1" = operator ] && dirs+=(operator)
  locks_of "$1" | tr ' ' '\n'
  for d in "${dirs[@]}"; do
    echo "$d/pyproject.toml"
    find "$d/src" \( -name __pycache__ -o -name '*.egg-info' -o -name build \) -prune \
      -o -type f ! -name '*.py[cod]' -print
  done
}

inputs_hash() { # target
  {
    printf 'target=%s tag=%s base=%s %s wheels=%s\n' "$1" "$tag" "$suite" "${base_options[*]}" \
      "$(basename "$wheelhouse")"
    sources "$1" | LC_ALL=C sort | xargs sha256sum
    sha256sum Dockerfile .dockerignore
  } | sha256sum | cut -c1-16
}

ref_of() { # target
  case $1 in
    operator) echo "localhost/berth-operator:$tag" ;;
    trainer) echo "localhost/berth-trainer:$tag" ;;
    trainer-gpu) echo "localhost/berth-trainer:$tag-gpu" ;;
  esac
}

base_image=
ensure_base() { # sets base_image; imports (or first builds) the Debian base image
  [ -n "$base_image" ] && return 0
  local hash tar start
  hash=$(printf '%s %s\n' "$suite" "${base_options[*]}" | sha256sum | cut -c1-16)
  base_image=localhost/berth-python-base:$hash
  pod image exists "$base_image" && return 0
  tar=$images/base/berth-python-base-$hash.tar
  if [ ! -s "$tar" ]; then
    start=$(now)
    echo "base image: mmdebstrap $suite ($base_packages)"
    local mirror=()
    [ -z "${BERTH_DEBIAN_MIRROR:-}" ] || mirror=("$BERTH_DEBIAN_MIRROR")
    mmdebstrap --quiet --format=tar "${base_options[@]}" "$suite" "$tar.tmp" "${mirror[@]}"
    mv "$tar.tmp" "$tar"
    echo "base image: built in $(took "$start")"
  fi
  pod import --quiet --change 'CMD ["python3"]' "$tar" "$base_image" >/dev/null
}

wheels_ready=
ensure_wheels() { # target: the host's pip downloads, verified, the locked files the build installs
  local reqs=() lock start python
  for lock in $(locks_of "$1"); do reqs+=(-r "$lock"); done
  [[ " $wheels_ready " == *" $1 "* ]] && return 0
  python=${BERTH_PIP_PYTHON:-$repo/.venv/bin/python}
  [ -x "$python" ] || python=python3
  local platforms=() sdist_only=()
  # Wheels for the base image's Python and glibc (and every older manylinux tag), not the host's.
  for minor in $(seq 5 "${wheel_glibc#2_}"); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
  # Pure-Python requirements published only as source (marked "sdist-only" in a requirements
  # file): their locked sdist, which the build turns into a wheel with the locked setuptools.
  for name in $(sed -nE 's/^([A-Za-z0-9._-]+).*#.*sdist-only.*$/\1/p' trainer/requirements.txt \
      operator/requirements.txt); do
    sdist_only+=(--no-binary "$name")
  done
  start=$(now)
  mkdir -p "$wheelhouse"
  # --no-deps: a lock lists every package already (and pip allows sdists with --platform only so).
  "$python" -m pip download --quiet --no-cache-dir --dest "$wheelhouse" --require-hashes --no-deps \
    --only-binary=:all: "${sdist_only[@]}" \
    --python-version "$wheel_python" --implementation cp --abi "cp${wheel_python/./}" \
    "${platforms[@]}" "${reqs[@]}"
  prune_wheelhouse
  echo "wheelhouse: $1's wheels ready in $(took "$start") ($(du -sh "$wheelhouse" | cut -f1))"
  wheels_ready+=" $1"
}

prune_wheelhouse() { # remove every file whose sha256 no lock names (older pins, stray wheels)
  local allowed sum file
  allowed=$(grep -ho 'sha256:[0-9a-f]\{64\}' "${all_locks[@]}" | cut -d: -f2 | sort -u)
  (cd "$wheelhouse" && find . -maxdepth 1 -type f -print0 | xargs -0r sha256sum) |
    while read -r sum file; do
      grep -qxF "$sum" <<<"$allowed" || { echo "wheelhouse: removing unlocked $file"; rm -f "$wheelhouse/$file"; }
    done
}

build() { # target hash archive
  local target=$1 hash=$2 archive=$3 ref start
  ref=$(ref_of "$target")
  install_tools
  ensure_base
  ensure_wheels "$target"
  start=$(now)
  echo "building $ref (target $target, inputs $hash)"
  pod build --quiet --network none --pull=never "${ulimits[@]}" \
    --build-arg "PYTHON_IMAGE=$base_image" \
    --volume "$wheelhouse:/wheelhouse:ro" --volume "$conf:/etc/xdg/pip:ro" \
    --label "dev.berth.inputs=$hash" --label "org.opencontainers.image.base.name=$base_image" \
    --label "org.opencontainers.image.base.digest=$(pod image inspect --format '{{.Digest}}' "$base_image")" \
    --target "$target" --tag "$ref" . >/dev/null
  echo "built $ref in $(took "$start")"
  start=$(now)
  pod save --quiet --format docker-archive --output "$archive.tmp" "$ref"
  mv "$archive.tmp" "$archive"
  echo "saved $archive ($(du -h "$archive" | cut -f1)) in $(took "$start")"
  built+=" $target"
  # Keep this archive and the one before it, per target.
  # shellcheck disable=SC2012  # names are ours: berth-<target>-<hex>.tar
  ls -t "$images/berth-$target"-????????????????.tar | tail -n +3 | xargs -r rm -f
}

ensure() { # target: build, load or keep its image; link its archive
  local target=$1 hash archive ref start
  start=$(now)
  hash=$(inputs_hash "$target")
  archive=$images/berth-$target-$hash.tar
  ref=$(ref_of "$target")
  if [ ! -s "$archive" ]; then
    build "$target" "$hash" "$archive"
  elif [ "$(pod image inspect --format '{{index .Labels "dev.berth.inputs"}}' "$ref" 2>/dev/null)" != "$hash" ]; then
    install_tools
    pod load --quiet --input "$archive" >/dev/null
    echo "loaded $ref from $archive in $(took "$start")"
  else
    echo "$ref is current (inputs $hash)"
  fi
  ln -sfn "$(basename "$archive")" "$images/berth-$target.tar"
}

# pip inside the build reads this site-wide config: the wheelhouse only, no index.
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > "$conf/pip.conf"

exec 9>"$images/.lock"
flock 9 # one build per cache at a time
total=$(now)
since=$(date +%s)
built=
for target in "${targets[@]}"; do
  ensure "$target"
done
if [ -n "$built" ]; then
  # Each build leaves the image it replaced and its stages untagged (~3 GB for the trainer), and
  # podman keeps them all: remove those made before this run, keeping this run's stages as the
  # layer cache of the next.
  start=$(now)
  pruned=$(pod image prune --force --filter "until=$since" | wc -l)
  echo "removed $pruned untagged images older than this build in $(took "$start")"
fi

# current.json: every target whose archive matches its current inputs, for hack/cluster.py.
manifest_lines=()
for target in operator trainer trainer-gpu; do
  hash=$(inputs_hash "$target")
  archive=$images/berth-$target-$hash.tar
  [ -s "$archive" ] && manifest_lines+=("$target $(ref_of "$target") $archive $hash")
done
printf '%s\n' "${manifest_lines[@]}" | python3 -c '
import json, os, sys
images = {}
for line in sys.stdin.read().splitlines():
    target, ref, archive, inputs = line.split(" ")
    images[target] = {"ref": ref, "archive": archive, "format": "docker-archive", "inputs": inputs}
path = sys.argv[1]
with open(path + ".tmp", "w") as f:
    json.dump({"tag": sys.argv[2], "images": images}, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
' "$images/current.json" "$tag"
echo "images ready in $(took "$total"); manifest $images/current.json"
