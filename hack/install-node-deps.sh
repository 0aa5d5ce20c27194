#!/usr/bin/env bash
# Install, with apt-get, what the real node of hack/cluster.py runs beside the built binaries:
# containerd (its CRI plugin), runc, the CNI plugins (bridge, host-local, loopback), iptables and
# conntrack (kube-proxy), iproute2 (the bridge), nftables (`nft`: the teardown of
# kube-network-policies' table); and chromium, the headless browser the real-node tests look at
# TensorBoard with. Only what is missing; a no-op on a ready machine.
# Skipped without root: `cluster.py up --kwok-only` needs none of it.
set -euo pipefail

declare -A wanted=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [iproute2]=/usr/sbin/ip
  [nftables]=/usr/sbin/nft
  [chromium]=/usr/bin/chromium
)
missing=()
for package in "${!wanted[@]}"; do
  [ -x "${wanted[$package]}" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "warning: the real node needs ${missing[*]} (not root: not installed; use --kwok-only)" >&2
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# One apt-get at a time: `make prerequisites` runs this beside hack/build-images.sh.
(
  flock 9
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
) 9>/tmp/berth-apt.lock
# The package starts a containerd service where an init system runs; the node starts its own.
