#!/usr/bin/env bash
# Build the control-plane binaries the integration tests run, from Go modules, into a cache
# outside the repository: ${XDG_CACHE_HOME:-$HOME/.cache}/berth/bin/<component>-<version>.
# A binary already in the cache is not rebuilt, so a warm machine skips this in seconds.
# Besides the control plane: the real node's kubelet and kube-proxy, a slim CoreDNS, a static
# `pause` program (hack/cluster.py turns it into the sandbox image; no registry is reachable),
# Kueue's controller manager with its CRDs and kube-network-policies (NetworkPolicy enforcement).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
bin=$cache/bin
logs=$cache/logs
mkdir -p "$bin" "$logs"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GO111MODULE=on

k8s_minor=${KUBERNETES_VERSION#v1.}            # 34.4
# The patched build is cached under its version and the patch's hash (hack/cluster.py agrees).
knp_patch=$here/kube-network-policies.patch
knp_version=$KUBE_NETWORK_POLICIES_VERSION-$(sha256sum "$knp_patch" | cut -c1-12)
staging_version=v0.${k8s_minor}                 # v0.34.4

fail() { # component log
  echo "error: building $1 failed; see its log: $2" >&2
  tail -n 20 "$2" >&2 || true
  exit 1
}

have() { [ -x "$bin/$1-$2" ]; }

build_kubernetes() {
  local missing=()
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    have "$c" "$KUBERNETES_VERSION" || missing+=("$c")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local log=$logs/kubernetes-$KUBERNETES_VERSION.log work
  work=$(mktemp -d)
  echo "building ${missing[*]} $KUBERNETES_VERSION (cold: about 4 min on 2 cores, 6 more with"\
    "kubelet and kube-proxy; log: $log)"
  (
    set -euo pipefail
    cd "$work"
    # k8s.io/kubernetes replaces its staging modules with ./staging paths, so `go install` of it
    # fails. A throw-away wrapper module requires it and pins each staging module instead; the list
    # is read from the .mod file the proxy serves for this version.
    modfile=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module berth.dev/controlplane"
      echo "go 1.24"
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      grep -oE '^\s*(replace\s+)?k8s\.io/[a-z0-9.-]+\s+=>\s+\./staging/' "$modfile" \
        | grep -oE 'k8s\.io/[a-z0-9.-]+' | sort -u \
        | while read -r m; do echo "replace $m => $m $staging_version"; done
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes@$KUBERNETES_VERSION"
    go mod tidy
    major=1 minor=${k8s_minor%%.*}
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
      ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    for c in "${missing[@]}"; do
      pkg=k8s.io/kubernetes/cmd/$c
      echo "go build $pkg"
      start=$SECONDS
      go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$bin/$c-$KUBERNETES_VERSION.tmp" "$pkg"
      mv "$bin/$c-$KUBERNETES_VERSION.tmp" "$bin/$c-$KUBERNETES_VERSION"
      echo "built $c in $((SECONDS - start)) s"
    done
  ) >"$log" 2>&1 || fail "kubernetes (${missing[*]})" "$log"
  rm -rf "$work"
}

# A throw-away wrapper module around one main.go (read from stdin), requiring `module` at
# `version` when given: etcd's and CoreDNS's own go.mod files have relative replaces, and the
# pause program is ours.
build_wrapper() { # component version module
  have "$1" "$2" && return 0
  local name=$1 version=$2 module=$3 log=$logs/$1-$2.log work
  work=$(mktemp -d)
  cat > "$work/main.go"
  echo "building $name $version (log: $log)"
  (
    set -euo pipefail
    cd "$work"
    printf 'module berth.dev/%s\n\ngo 1.24\n' "$name" > go.mod
    [ -z "$module" ] || go get "$module@$version"
    go mod tidy
    start=$SECONDS
    go build -trimpath -ldflags "-s -w" -o "$bin/$name-$version.tmp" .
    mv "$bin/$name-$version.tmp" "$bin/$name-$version"
    echo "built $name in $((SECONDS - start)) s"
  ) >"$log" 2>&1 || fail "$name" "$log"
  rm -rf "$work"
}

build_etcd() {
  build_wrapper etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
}

build_gobin() { # component version package ldflags
  have "$1" "$2" && return 0
  local log=$logs/$1-$2.log gobin
  gobin=$(mktemp -d)
  echo "building $1 $2 (log: $log)"
  GOBIN=$gobin go install -trimpath -ldflags "-s -w $4" "$3@$2" >"$log" 2>&1 || fail "$1" "$log"
  mv "$gobin/$1" "$bin/$1-$2"
  rm -rf "$gobin"
}

build_coredns() {
  # A slim CoreDNS: only the plugins the real node's DNS uses, and no `forward` (nothing may be
  # looked up off the machine). The wrapper sets the directive order the full build generates
  # from plugin.cfg, restricted to these plugins.
  build_wrapper coredns "$COREDNS_VERSION" github.com/coredns/coredns <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes",
	}
}

func main() { coremain.Run() }
GO
}

build_pause() {
  # The pod sandbox's process: sleeps until SIGTERM/SIGINT and reaps orphans (it is pid 1 of
  # the pod's namespaces). Static, so the image is this one file FROM scratch.
  build_wrapper pause "$PAUSE_VERSION" "" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
}

build_kueue() {
  # The controller manager, and beside it the module's CRDs and webhook configurations, which
  # hack/cluster.py installs (it has no YAML parser: kubectl reads them).
  build_gobin kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  local manifests=$cache/kueue-$KUEUE_VERSION
  [ -s "$manifests/webhooks.yaml" ] && return 0
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$manifests.tmp" && mkdir -p "$manifests.tmp/crds"
  cp "$dir"/config/components/crd/bases/*.yaml "$manifests.tmp/crds/"
  cp "$dir/config/components/webhook/manifests.yaml" "$manifests.tmp/webhooks.yaml"
  chmod -R u+w "$manifests.tmp" && rm -rf "$manifests" && mv "$manifests.tmp" "$manifests"
}

build_kube_network_policies() {
  # Its module, patched (see the patch's header: the xtables NFQUEUE target for kernels without
  # nft_queue, and $KUBECONFIG for a host process), built as it is.
  have kube-network-policies "$knp_version" && return 0
  local log=$logs/kube-network-policies-$knp_version.log work
  work=$(mktemp -d)
  echo "building kube-network-policies $knp_version (log: $log)"
  (
    set -euo pipefail
    dir=$(go mod download -json "sigs.k8s.io/kube-network-policies@$KUBE_NETWORK_POLICIES_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    cp -r "$dir/." "$work" && chmod -R u+w "$work" && cd "$work"
    patch -p1 --forward < "$knp_patch"
    start=$SECONDS
    go build -trimpath -ldflags "-s -w" -o "$bin/kube-network-policies-$knp_version.tmp" ./cmd
    mv "$bin/kube-network-policies-$knp_version.tmp" "$bin/kube-network-policies-$knp_version"
    echo "built kube-network-policies in $((SECONDS - start)) s"
  ) >"$log" 2>&1 || fail kube-network-policies "$log"
  rm -rf "$work"
}

want=${*:-kubernetes etcd kwok helm coredns pause kueue kube-network-policies}
for component in $want; do
  case $component in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    kwok) build_gobin kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
            "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    helm) build_gobin helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
            "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    coredns) build_coredns ;;
    pause) build_pause ;;
    kueue) build_kueue ;;
    kube-network-policies) build_kube_network_policies ;;
    *) echo "unknown component: $component" >&2; exit 2 ;;
  esac
done
# Stable names for the pinned versions, for the Makefile, tests and developers' PATH.
links=$here/../.cluster/bin
mkdir -p "$links"
for name in etcd kwok helm coredns kueue kube-apiserver kube-controller-manager kube-scheduler kubectl \
  kubelet kube-proxy kube-network-policies; do
  case $name in
    etcd) v=$ETCD_VERSION ;; kwok) v=$KWOK_VERSION ;; helm) v=$HELM_VERSION ;;
    coredns) v=$COREDNS_VERSION ;; kueue) v=$KUEUE_VERSION ;; kube-network-policies) v=$knp_version ;;
    *) v=$KUBERNETES_VERSION ;;
  esac
  [ -x "$bin/$name-$v" ] && ln -sfn "$bin/$name-$v" "$links/$name"
done
echo "control-plane binaries ready in $bin ($(du -sh "$bin" | cut -f1)); linked in .cluster/bin"
