#!/usr/bin/env python3
"""A real Kubernetes control plane for Berth's tests: `up`, `down`, `status`, `leftovers`.

Starts etcd, kube-apiserver (Node and RBAC authorization), kube-controller-manager (garbage
collection and the other default controllers), kube-scheduler, KWOK managing four fake nodes
and Kueue's controller manager (`start_kueue`), from the binaries that
hack/build-control-plane.sh builds into the cache. Everything
lives under `.cluster/` in the repository (git-ignored): PKI, kubeconfigs, logs, pid files,
etcd data and `bin/` links to the binaries. `up` is idempotent; ports are picked free at start.

Beside the KWOK nodes, `up` starts one real node, `berth-node-0` (hack/realnode.py: containerd,
kubelet, kube-proxy, CoreDNS, kube-network-policies enforcing NetworkPolicy, pods on the bridge
`berth0`, 10.244.0.0/24, no default route).
It needs root and hack/install-node-deps.sh's packages; `--kwok-only` (or BERTH_KWOK_ONLY=1,
which reaches it through the tests' fixture too) skips it, and then the apiserver listens on
127.0.0.1 instead of the bridge address 10.244.0.1 (where pods reach it, also as the
`kubernetes` Service 10.96.0.1). One machine holds one real node. The node is tainted and labelled
`berth.dev/real-node=true`; state.json's `real_node` tells tests its name, placement, containerd
socket and network. Images: a `pause` image made here from the built binary, and whatever
hack/build-images.sh listed in ${BERTH_CACHE_DIR:-~/.cache/berth}/images/current.json.

    python3 hack/cluster.py up [--kwok-only]   # prints how to use .cluster/kubeconfig
    python3 hack/cluster.py down               # also after a crash: from pid files and /proc
    python3 hack/cluster.py leftovers          # exit 1 if a real node left anything behind
    python3 hack/cluster.py restart-apiserver   # same port, same etcd: watches must reconnect

Only the standard library is used, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# hack/realnode.py, beside this file (also when this file is loaded by path, as bench/ does).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import realnode

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
STATE = Path(os.environ.get("BERTH_CLUSTER_DIR", REPO / ".cluster"))
PKI, LOGS, PIDS = STATE / "pki", STATE / "logs", STATE / "pids"
KUBECONFIG = STATE / "kubeconfig"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kueue",
)
#: The real node's processes, in start order (kubelet last: the pause image must be there).
NODE_COMPONENTS = ("containerd", "coredns", "kube-proxy", "kube-network-policies", "kubelet")
KWOK_NODES = 4
SERVICE_CIDR = "10.96.0.0/16"
#: Pod IPs are loopback addresses, so a test can serve a pod's metrics on its IP.
POD_CIDR = "127.20.0.0/16"


def versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (HACK / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def kube_network_policies_version(v: dict[str, str]) -> str:
    """Its cache key, as hack/build-control-plane.sh makes it: the version and the patch's hash."""
    patch = (HACK / "kube-network-policies.patch").read_bytes()
    return f"{v['KUBE_NETWORK_POLICIES_VERSION']}-{hashlib.sha256(patch).hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(
        os.environ.get("BERTH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "berth"
    )


def binaries(node: bool = False) -> dict[str, Path]:
    v = versions()
    cache = cache_dir()
    k8s = v["KUBERNETES_VERSION"]
    wanted = {
        "etcd": v["ETCD_VERSION"],
        "kube-apiserver": k8s,
        "kube-controller-manager": k8s,
        "kube-scheduler": k8s,
        "kubectl": k8s,
        "kwok": v["KWOK_VERSION"],
        "helm": v["HELM_VERSION"],
        "kueue": v["KUEUE_VERSION"],
    }
    if node:
        wanted |= {"kubelet": k8s, "kube-proxy": k8s}
        wanted |= {"coredns": v["COREDNS_VERSION"], "pause": v["PAUSE_VERSION"]}
        wanted |= {"kube-network-policies": kube_network_policies_version(v)}
    found = {name: cache / "bin" / f"{name}-{ver}" for name, ver in wanted.items()}
    missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
    if missing:
        sys.exit(
            "error: control-plane binaries missing (run `make control-plane`): "
            + ", ".join(missing)
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(node: bool) -> None:
    """One CA, a serving cert, client certs per component, and the service-account key pair;
    with the real node also its kubelet's serving and client certs, kube-proxy's, CoreDNS's
    and the apiserver's client cert for kubelets (`kubectl logs/exec`)."""
    PKI.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = PKI / "ca.key", PKI / "ca.crt"
    openssl("genrsa", "-out", str(ca_key), "2048")
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca_key),
        "-subj",
        "/CN=berth-test-ca",
        "-days",
        "365",
        "-out",
        str(ca_crt),
    )
    openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
    openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))
    sans = (
        f"subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:{realnode.BRIDGE_IP},DNS:localhost,"
        "DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc"
    )
    certs = {
        "apiserver": ("/CN=kube-apiserver", sans, "serverAuth"),
        "admin": ("/O=system:masters/CN=berth-admin", None, "clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", None, "clientAuth"),
        "scheduler": ("/CN=system:kube-scheduler", None, "clientAuth"),
        "kwok": ("/O=system:masters/CN=kwok", None, "clientAuth"),
        "kueue": ("/O=system:masters/CN=kueue", None, "clientAuth"),
        # Kueue's webhooks, called by the apiserver on loopback.
        "kueue-webhook": ("/CN=kueue-webhook", "subjectAltName=IP:127.0.0.1", "serverAuth"),
    }
    if node:
        kubelet_san = f"subjectAltName=IP:{realnode.BRIDGE_IP},DNS:{realnode.NODE_NAME}"
        certs |= {
            "kubelet": (f"/O=system:nodes/CN=system:node:{realnode.NODE_NAME}", None, "clientAuth"),
            "kubelet-serving": (f"/CN={realnode.NODE_NAME}", kubelet_san, "serverAuth"),
            "kube-proxy": ("/CN=system:kube-proxy", None, "clientAuth"),
            "coredns": (f"/CN={COREDNS_USER}", None, "clientAuth"),
            "kube-network-policies": (f"/CN={NETPOL_USER}", None, "clientAuth"),
            "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver", None, "clientAuth"),
        }
    for name, (subject, san, usage) in certs.items():
        key, csr, crt = (PKI / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = PKI / f"{name}.ext"
        ext.write_text(
            f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyEncipherment\n"
            + (f"{san}\n" if san else "")
        )
        openssl("genrsa", "-out", str(key), "2048")
        openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_crt),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )


def write_kubeconfig(path: Path, server: str, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "berth-test",
                "cluster": {"server": server, "certificate-authority-data": b64(PKI / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(PKI / f"{user}.crt"),
                    "client-key-data": b64(PKI / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "berth-test", "context": {"cluster": "berth-test", "user": user}}],
        "current-context": "berth-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    path.chmod(0o600)


#: Components started by this invocation: their liveness comes from the child handle itself.
STARTED: dict[str, subprocess.Popen[bytes]] = {}


def start(name: str, argv: list[str]) -> None:
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    STARTED[name] = proc
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    (PIDS / f"{name}.argv").write_text(json.dumps(argv))


def pid_alive(name: str) -> bool:
    if name in STARTED:
        return STARTED[name].poll() is None
    pid_file = PIDS / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    # A zombie or a reused pid of another program does not count.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # cmdline reads empty for a moment after exec on some kernels: that is still our process.
    return stat.split(") ", 1)[1][0] != "Z" and (not cmdline or str(STATE).encode() in cmdline)


def wait_until(what: str, check, timeout: float, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if log and not pid_alive(log):
            die(f"{log} exited while waiting for {what}", log)
        time.sleep(0.25)
    die(f"timed out after {timeout:.0f}s waiting for {what}", log)


def die(message: str, log: str | None = None) -> None:
    if log:
        path = LOGS / f"{log}.log"
        tail = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
        message += f"\n--- last lines of {path}:\n" + "\n".join(tail)
    stop_all()
    sys.exit(f"error: {message}")


def apiserver_ready(host: str, port: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    try:
        with urllib.request.urlopen(f"https://{host}:{port}/readyz", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def etcd_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def kubectl(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries()["kubectl"]), "--kubeconfig", str(KUBECONFIG), *args],
        check=check,
        capture_output=True,
        text=True,
        input=input,
    )


def nodes_ready(real_node: bool) -> bool:
    """The 4 KWOK nodes, and the real node when there is one, are Ready."""
    out = kubectl("get", "nodes", "-o", "json", check=False)
    if out.returncode:
        return False
    items = json.loads(out.stdout)["items"]
    names = {n["metadata"]["name"] for n in items}
    if real_node and realnode.NODE_NAME not in names:
        return False
    return len(items) >= KWOK_NODES + real_node and all(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
        for n in items
    )


def running() -> bool:
    path = STATE / "state.json"
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    components = COMPONENTS + (NODE_COMPONENTS if state.get("real_node") else ())
    if not all(pid_alive(c) for c in components):
        return False
    return apiserver_ready(state.get("apiserver_host", "127.0.0.1"), state["apiserver_port"])


#: The real node's CoreDNS reads Services, EndpointSlices, Namespaces (and Pods) as this user.
COREDNS_USER = "berth:coredns"
#: The real node's kube-network-policies reads what NetworkPolicies select, as this user.
NETPOL_USER = "berth:kube-network-policies"


def read_only_rbac(user: str, rules: list[dict[str, object]]) -> dict[str, object]:
    """A ClusterRole of `rules` bound to the client-certificate user `user`."""
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": user},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": user},
                "roleRef": ref,
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        ],
    }


COREDNS_RBAC = read_only_rbac(
    COREDNS_USER,
    [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ],
)
NETPOL_RBAC = read_only_rbac(
    NETPOL_USER,
    [
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["list", "watch"],
        },
    ],
)


def up(kwok_only: bool) -> None:
    if running():
        state = json.loads((STATE / "state.json").read_text())
        if state.get("real_node"):  # rebuilt images reach a running node too
            import_images(realnode.Node(STATE), state)
        print_usage()
        return
    stop_all()
    with_node = not kwok_only
    bins = binaries(node=with_node)
    node = realnode.Node(STATE)
    if with_node:
        if os.geteuid() != 0:
            sys.exit("error: the real node needs root; `hack/cluster.py up --kwok-only` does not")
        if missing := node.missing_host_tools():
            sys.exit(f"error: missing {', '.join(missing)}: run hack/install-node-deps.sh")
        if realnode.link_exists(realnode.BRIDGE):  # stop_all() removed our own
            sys.exit(
                f"error: bridge {realnode.BRIDGE} exists: another cluster directory runs the one "
                "real node this machine can have; stop it, or use --kwok-only"
            )
    for d in (PKI, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    make_pki(with_node)
    names = ["etcd", "etcd_peer", "apiserver", "kwok", "kueue_webhook", "kueue_health"]
    if with_node:
        names += ["kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics"]
        names += ["dns_health", "dns_ready", "netpol_metrics"]
    ports = {k: free_port() for k in names}
    host = realnode.BRIDGE_IP if with_node else "127.0.0.1"
    server = f"https://{host}:{ports['apiserver']}"
    users = ["admin", "controller-manager", "scheduler", "kwok", "kueue"]
    users += ["kubelet", "kube-proxy", "coredns", "kube-network-policies"] if with_node else []
    for user in users:
        write_kubeconfig(STATE / f"{user}.kubeconfig", server, user)
    shutil.copy(STATE / "admin.kubeconfig", KUBECONFIG)
    KUBECONFIG.chmod(0o600)

    start(
        "etcd",
        [
            str(bins["etcd"]),
            "--name",
            "berth",
            "--data-dir",
            str(STATE / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{ports['etcd']}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{ports['etcd']}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-cluster",
            f"berth=http://127.0.0.1:{ports['etcd_peer']}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
            "--quota-backend-bytes",
            str(2 << 30),
        ],
    )
    pause_ref = f"localhost/pause:{versions()['PAUSE_VERSION']}"
    if with_node:
        node.prepare_host()  # the bridge address must exist before the apiserver binds it
        start("containerd", ["containerd", "--config", str(node.containerd_config(pause_ref))])
    wait_until("etcd health", lambda: etcd_ready(ports["etcd"]), 30, "etcd")

    if with_node:
        # Pods reach the apiserver on the bridge; the `kubernetes` Service's endpoint follows
        # the advertised address (lease reconciler). Kubelet connections: by InternalIP only.
        node_flags = [
            "--endpoint-reconciler-type=lease",
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        ]
    else:
        node_flags = ["--endpoint-reconciler-type=none", "--authorization-mode=RBAC"]
    start(
        "kube-apiserver",
        [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={PKI / 'apiserver.crt'}",
            f"--tls-private-key-file={PKI / 'apiserver.key'}",
            f"--client-ca-file={PKI / 'ca.crt'}",
            f"--service-account-key-file={PKI / 'sa.pub'}",
            f"--service-account-signing-key-file={PKI / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            *node_flags,
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
    )
    if with_node:  # while the apiserver starts
        containerd_ok = lambda: node.ctr("version", check=False).returncode == 0  # noqa: E731
        wait_until("containerd", containerd_ok, 30, "containerd")
        archive = realnode.pause_image(bins["pause"], pause_ref, node.dir / "pause.tar")
        node.import_archive(pause_ref, archive)
    wait_until(
        "kube-apiserver /readyz",
        lambda: apiserver_ready(host, ports["apiserver"]),
        90,
        "kube-apiserver",
    )

    start(
        "kube-controller-manager",
        [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={STATE / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={PKI / 'sa.key'}",
            f"--root-ca-file={PKI / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
            f"--cluster-signing-key-file={PKI / 'ca.key'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--concurrent-gc-syncs=5",
            "--v=1",
        ],
    )
    start(
        "kube-scheduler",
        [
            str(bins["kube-scheduler"]),
            f"--kubeconfig={STATE / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={STATE / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={STATE / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=1",
        ],
    )
    kwok_config = STATE / "kwok.yaml"
    kwok_config.write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n"
        f"  cidr: {POD_CIDR}\n  nodeIP: 127.19.0.1\n  nodeLeaseDurationSeconds: 40\n"
        "  nodeLeaseParallelism: 4\n  podPlayStageParallelism: 4\n"
        "  nodePlayStageParallelism: 4\n  podsOnNodeSyncParallelism: 2\n"
        "---\n"
        + "---\n".join(p.read_text() for p in sorted((HACK / "kwok" / "stages").glob("*.yaml")))
    )
    start(
        "kwok",
        [
            str(bins["kwok"]),
            f"--kubeconfig={STATE / 'kwok.kubeconfig'}",
            f"--config={kwok_config}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
    )
    state: dict[str, object] = {
        "apiserver_port": ports["apiserver"],
        "apiserver_host": host,
        "server": server,
        "ports": ports,
    }
    if with_node:
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps(COREDNS_RBAC))
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps(NETPOL_RBAC))
        start_node(node, bins, ports)
        state["real_node"] = {
            "name": realnode.NODE_NAME,
            "label": {"key": realnode.LABEL, "value": "true"},
            "taint": {"key": realnode.LABEL, "value": "true", "effect": "NoSchedule"},
            "containerd_address": str(node.socket),
            "bridge": realnode.BRIDGE,
            "bridge_ip": realnode.BRIDGE_IP,
            "pod_cidr": realnode.POD_CIDR,
            "dns_ip": realnode.BRIDGE_IP,
            "cluster_domain": "cluster.local",
            "pause_image": pause_ref,
            "images": [pause_ref],
        }
    (STATE / "state.json").write_text(json.dumps(state, indent=2))

    wait_until(
        "the default namespace",
        lambda: kubectl("get", "namespace", "default", check=False).returncode == 0,
        30,
        "kube-apiserver",
    )
    kubectl("apply", "--server-side", "-f", str(HACK / "kwok" / "nodes.yaml"))
    what = f"{KWOK_NODES} KWOK nodes" + (f" and {realnode.NODE_NAME}" if with_node else "")
    wait_until(
        f"{what} Ready", lambda: nodes_ready(with_node), 60, "kubelet" if with_node else "kwok"
    )
    wait_until(
        "the default ServiceAccount",
        lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
        "kube-controller-manager",
    )
    start_kueue(bins["kueue"], ports)
    if with_node:
        ready = f"http://127.0.0.1:{ports['dns_ready']}/ready"
        wait_until("CoreDNS ready", lambda: http_ok(ready), 30, "coredns")
        print(f"control plane and {realnode.NODE_NAME} up in {time.monotonic() - t0:.1f}s")
        import_images(node, state)
    else:
        print(f"control plane up in {time.monotonic() - t0:.1f}s")
    print_usage()


#: Kueue's configuration. Job kinds: its default batch/job (nothing here labels a Job) and
#: BertTraining, whose Workloads the Berth operator creates (an external framework:
#: docs/operator.md, "With Kueue"; the name is pinned by tests/unit/operator/test_op_kueue.py).
KUEUE_CONFIG = """apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: 127.0.0.1:{health}
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
# All-or-nothing as clusters run it: no other admission while an admitted Workload's pods are
# not all Ready (the operator keeps its PodsReady condition; tests/integration/test_kueue.py).
waitForPodsReady:
  timeout: 5m
  blockAdmission: true
integrations:
  frameworks: ["batch/job"]  # the default (an empty list means it too); no webhook for it here
  externalFrameworks: ["BertTraining.v1alpha1.berth.dev"]
"""


def kueue_manifests() -> Path:
    return cache_dir() / f"kueue-{versions()['KUEUE_VERSION']}"


def start_kueue(kueue: Path, ports: dict[str, int]) -> None:
    """Kueue's CRDs, its controller manager (webhooks on loopback, serving a certificate of our
    CA; no visibility API server) and the webhook configurations of its own kinds."""
    manifests = kueue_manifests()
    if not (manifests / "webhooks.yaml").exists():
        die(f"Kueue's manifests are missing in {manifests}: run `make control-plane`")
    kubectl("apply", "--server-side", "-f", str(manifests / "crds"))
    established = lambda: (  # noqa: E731
        kubectl(
            "wait", "--for=condition=Established", "crd", "--all", "--timeout=5s", check=False
        ).returncode
        == 0
    )
    wait_until("Kueue's CRDs Established", established, 60, "kube-apiserver")
    certs = PKI / "kueue-webhook"
    certs.mkdir(exist_ok=True)
    shutil.copy(PKI / "kueue-webhook.crt", certs / "tls.crt")
    shutil.copy(PKI / "kueue-webhook.key", certs / "tls.key")
    config = STATE / "kueue.yaml"
    config.write_text(
        KUEUE_CONFIG.format(
            health=ports["kueue_health"], webhook=ports["kueue_webhook"], certs=certs
        )
    )
    # Without Kueue's own certificate management, its manager reads a metrics certificate from
    # a fixed path, /etc/kueue/metrics/certs (metrics are off here: any certificate does). It
    # runs in a mount namespace of its own whose /etc is a tmpfs holding just that: the host's
    # /etc is not touched. Its Go code reads nothing else there (the kubeconfig has the CA).
    metrics_certs = "/etc/kueue/metrics/certs"
    script = (
        "set -e; mount -t tmpfs -o size=1m,mode=755 berth-kueue-etc /etc; "
        f"mkdir -p {metrics_certs}; cp {certs}/tls.crt {certs}/tls.key {metrics_certs}/; "
        'exec "$@"'
    )
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    start(
        "kueue",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            *userns,
            "sh",
            "-c",
            script,
            "kueue",
            str(kueue),
            f"--config={config}",
            f"--kubeconfig={STATE / 'kueue.kubeconfig'}",
            "--feature-gates=VisibilityOnDemand=false",
        ],
    )
    ready = f"http://127.0.0.1:{ports['kueue_health']}/readyz"
    wait_until("Kueue ready", lambda: http_ok(ready), 60, "kueue")
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(kueue_webhooks(ports)))


def kueue_webhooks(ports: dict[str, int]) -> dict[str, object]:
    """The module's webhook configurations, for Kueue's own kinds only, calling the manager at
    https://127.0.0.1:<port><path> instead of through a Service."""
    listed = kubectl(
        "create", "--dry-run=client", "-o", "json", "-f", str(kueue_manifests() / "webhooks.yaml")
    )
    docs, text, decoder = [], listed.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON document per YAML document
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:].lstrip()
    ca = base64.b64encode((PKI / "ca.crt").read_bytes()).decode()
    items = []
    for doc in docs:
        hooks = []
        for hook in doc.get("webhooks", []):
            if not any("kueue.x-k8s.io" in r.get("apiGroups", []) for r in hook["rules"]):
                continue
            path = hook["clientConfig"]["service"]["path"]
            url = f"https://127.0.0.1:{ports['kueue_webhook']}{path}"
            hooks.append({**hook, "clientConfig": {"url": url, "caBundle": ca}})
        name = "kueue-" + doc["metadata"]["name"]
        items.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def start_node(node: realnode.Node, bins: dict[str, Path], ports: dict[str, int]) -> None:
    """CoreDNS, kube-proxy and the kubelet (containerd runs, with the pause image, already)."""
    corefile = node.corefile(STATE / "coredns.kubeconfig", ports["dns_health"], ports["dns_ready"])
    start("coredns", [str(bins["coredns"]), "-conf", str(corefile)])
    proxy = node.kube_proxy_config(
        STATE / "kube-proxy.kubeconfig", ports["proxy_healthz"], ports["proxy_metrics"]
    )
    start("kube-proxy", [str(bins["kube-proxy"]), f"--config={proxy}", "--v=1"])
    # Before the kubelet: no pod of a policy runs unenforced. Teardown deletes its nftables table.
    start(
        "kube-network-policies",
        [
            str(bins["kube-network-policies"]),
            f"--kubeconfig={STATE / 'kube-network-policies.kubeconfig'}",
            f"--hostname-override={realnode.NODE_NAME}",
            f"--metrics-bind-address=127.0.0.1:{ports['netpol_metrics']}",
            "--disable-nri",  # pod IPs from the API server: this containerd runs no NRI
            "--v=1",
        ],
    )
    config = node.kubelet_config(PKI, ports["kubelet"], ports["kubelet_healthz"])
    start(
        "kubelet",
        [
            str(bins["kubelet"]),
            f"--config={config}",
            f"--kubeconfig={STATE / 'kubelet.kubeconfig'}",
            f"--root-dir={node.kubelet}",
            f"--cert-dir={node.kubelet / 'pki'}",
            f"--hostname-override={realnode.NODE_NAME}",
            f"--node-ip={realnode.BRIDGE_IP}",
            f"--node-labels={realnode.LABEL}=true",
            "--v=1",
        ],
    )


def import_images(node: realnode.Node, state: dict[str, object]) -> None:
    """Import the images hack/build-images.sh listed (archives that exist); print what."""
    current = cache_dir() / "images" / "current.json"
    listed = realnode.listed_images(current)
    if not listed:
        print(f"no images to import ({current}: none listed, or no archive)")
    refs = []
    for ref, archive in listed:
        t = time.monotonic()
        try:
            imported = node.import_archive(ref, archive)
        except RuntimeError as e:
            print(f"warning: {e}", file=sys.stderr)
            continue
        refs.append(ref)
        took = f"{time.monotonic() - t:.1f}s"
        print(
            f"imported {ref} from {archive} in {took}"
            if imported
            else f"{ref}: already in containerd"
        )
    if stale := node.prune_replaced_images():
        print(f"removed {len(stale)} replaced image(s) from containerd")
    real = state["real_node"]
    assert isinstance(real, dict)
    real["images"] = [real["pause_image"], *refs]
    (STATE / "state.json").write_text(json.dumps(state, indent=2))


def print_usage() -> None:
    print(
        f"kubeconfig: {KUBECONFIG}\n"
        f"  export KUBECONFIG={KUBECONFIG} PATH={STATE / 'bin'}:$PATH\n"
        "  kubectl get nodes\n"
        f"logs: {LOGS}/; stop with `make cluster-down`"
    )


def stop(names: tuple[str, ...], grace: float = 15) -> None:
    """SIGTERM the components' process groups; SIGKILL what is left after `grace` seconds."""
    procs = []
    for name in names:
        if pid_alive(name):
            pid = int((PIDS / f"{name}.pid").read_text())
            procs.append((name, pid))
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, pid in procs:
        while time.monotonic() < deadline and still_running(name, pid):
            time.sleep(0.1)
        if still_running(name, pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if name in STARTED:  # our own child: reap it
            STARTED.pop(name).wait()


def still_running(name: str, pid: int) -> bool:
    if name in STARTED:
        return STARTED[name].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def restart_containerd(node: realnode.Node) -> None:
    """Start the crashed node's containerd again, as before, for up to 10 s until it answers."""
    argv_file = PIDS / "containerd.argv"
    if not argv_file.exists():
        return
    node.kill_shims()  # it must not reconnect to them
    start("containerd", json.loads(argv_file.read_text()))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive("containerd"):
        if node.ctr("version", check=False).returncode == 0:
            return
        time.sleep(0.2)


def restart_apiserver() -> None:
    """Stop kube-apiserver and start it again on the same port (tests of watch reconnects)."""
    if not running():
        sys.exit("error: the control plane is not running")
    argv = json.loads((PIDS / "kube-apiserver.argv").read_text())
    stop(("kube-apiserver",))
    start("kube-apiserver", argv)
    state = json.loads((STATE / "state.json").read_text())
    host, port = state.get("apiserver_host", "127.0.0.1"), state["apiserver_port"]
    wait_until("kube-apiserver /readyz", lambda: apiserver_ready(host, port), 90, "kube-apiserver")
    print("kube-apiserver restarted")


def stop_all() -> None:
    """Stop everything `up` started; a real node's containers go first and its host changes
    are undone (hack/realnode.py), also after a crash."""
    node = realnode.Node(STATE)
    record = realnode.read_json(node.sysctls)
    was_up = isinstance(record, dict) and not record.get("restored", True)
    stop(("kubelet",))  # so that nothing restarts the containers killed next
    if was_up and not pid_alive("containerd"):
        restart_containerd(node)  # after a crash: to forget its containers, keep its images
    containerd_up = pid_alive("containerd")
    if containerd_up:
        node.kill_containers()
    stop(("kube-proxy", "kube-network-policies", "coredns", "containerd"))
    # kube-apiserver lingers ~15 s after it stopped listening; its state goes with etcd's.
    stop(tuple(reversed(COMPONENTS)), grace=5)
    if was_up and os.geteuid() == 0:  # this directory's node (another's bridge is not ours)
        proxy = cache_dir() / "bin" / f"kube-proxy-{versions()['KUBERNETES_VERSION']}"
        for left in node.teardown(proxy, containerd_up):
            print(f"warning: left behind: {left}", file=sys.stderr)
    for path in (PIDS, STATE / "etcd", PKI, STATE / "state.json"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command", choices=["up", "down", "status", "leftovers", "restart-apiserver"]
    )
    parser.add_argument(
        "--kwok-only",
        action="store_true",
        default=os.environ.get("BERTH_KWOK_ONLY") == "1",
        help="up: no real node, no root needed (also BERTH_KWOK_ONLY=1, e.g. for pytest)",
    )
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    # One `up`/`down` at a time: concurrent test sessions share the cluster instead of racing.
    lock = open(STATE / "lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    if args.command == "up":
        up(args.kwok_only)
    elif args.command == "restart-apiserver":
        restart_apiserver()
    elif args.command == "down":
        t0 = time.monotonic()
        stop_all()
        print(f"control plane stopped in {time.monotonic() - t0:.1f}s")
    elif args.command == "leftovers":
        found = realnode.Node(STATE).leftovers() if os.geteuid() == 0 else []
        print("\n".join(found) if found else "nothing left behind")
        sys.exit(1 if found else 0)
    else:
        ok = running()
        print("running" if ok else "not running")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
