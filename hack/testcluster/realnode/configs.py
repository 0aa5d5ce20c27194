"""The configuration files of the real node's containerd, kubelet, kube-proxy and CoreDNS."""

from __future__ import annotations

from pathlib import Path

from .node import BRIDGE_IP, LABEL, NODE_NAME, POD_CIDR, Node, write_json


def containerd_config(node: Node, pause_ref: str) -> Path:
    root, state = node.containerd / "root", node.containerd / "state"
    text = f"""version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.containerd / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = "{node.containerd / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{node.cni_bin}"
    conf_dir = "{node.cni_conf}"
    max_conf_num = 1
"""
    path = node.dir / "containerd.toml"
    path.write_text(text)
    return path


def kubelet_config(node: Node, pki: Path, port: int, healthz_port: int) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": BRIDGE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "clusterDNS": [BRIDGE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": "",  # pods never see the host's resolvers
        "podCIDR": POD_CIDR,
        "podLogsDir": str(node.pod_logs),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "registerWithTaints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "volumeStatsAggPeriod": "0s",
    }
    path = node.dir / "kubelet.yaml"
    write_json(path, config)  # JSON is YAML
    return path


def kube_proxy_config(node: Node, kubeconfig: Path, healthz_port: int, metrics_port: int) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "bindAddress": BRIDGE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{BRIDGE_IP}/32"],
        # Replies of a pod -> ClusterIP -> pod connection on the one bridge come back
        # through the host, without br_netfilter.
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        # 0: leave the host's conntrack table settings alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = node.dir / "kube-proxy.yaml"
    write_json(path, config)
    return path


def corefile(node: Node, kubeconfig: Path, health_port: int, ready_port: int) -> Path:
    """CoreDNS on the bridge address, cluster zones only: no `forward`, no other zone."""
    path = node.dir / "Corefile"
    path.write_text(
        f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {BRIDGE_IP}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} berth-test
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""
    )
    return path
