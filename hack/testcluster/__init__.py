"""A real Kubernetes control plane for Berth's tests, run by hack/cluster.py.

Starts etcd, kube-apiserver (Node and RBAC authorization), kube-controller-manager (garbage
collection and the other default controllers), kube-scheduler, KWOK managing four fake nodes
and Kueue's controller manager, from the binaries that hack/build-control-plane.sh builds into
the cache. Everything lives under `.cluster/` in the repository (git-ignored; BERTH_CLUSTER_DIR
moves it): PKI, kubeconfigs, logs, pid files, etcd data and `bin/` links to the binaries.

Beside the KWOK nodes runs one real node, `berth-node-0` (`realnode/`: containerd, kubelet,
kube-proxy, CoreDNS, kube-network-policies, pods on the bridge `berth0`).

Modules, one per component:

    config        paths, pinned versions, the cached binaries, state.json
    processes     starting, watching and stopping the components' processes
    pki           the CA, certificates and kubeconfigs
    health        readiness probes and kubectl
    controlplane  etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    kwok          KWOK and its fake nodes
    kueue         Kueue's CRDs, controller manager and webhooks
    lifecycle     `up` and `down` of the whole cluster
    realnode/     the real node: host networking, containerd, configs, images, its components,
                  and `kill-node` / `start-node` (power loss and boot)
    cli           hack/cluster.py's commands

Only the standard library is used, so it runs before any virtualenv exists.
"""
