"""The real node of hack/cluster.py: host set-up and teardown, and the node components' configs.

One node, `berth-node-0`, runs real containers beside the KWOK nodes: containerd (own root,
state and socket under `.cluster/node/`), kubelet, kube-proxy (iptables), a slim CoreDNS and
kube-network-policies, which enforces NetworkPolicy with its nftables table `NFT_TABLE`: it
queues new connections to and from pods that a policy selects to itself (nfqueue) and lets
through only what the policies allow. Traffic between two pods on the bridge passes the IP
hooks it uses because bridged packets are handed to them (`net.bridge.bridge-nf-call-iptables`);
the host's own connections to pods (10.244.0.1) are judged too.
Pods sit on a bridge this module creates, `berth0` (10.244.0.1/24), with no default route:
only the bridge subnet and a route to the Service CIDR through the bridge address, where
kube-apiserver, CoreDNS and kube-proxy's DNAT answer. A FORWARD rule drops anything that
enters from the bridge and would leave by another interface, so nothing a pod sends leaves the
machine. The node is labelled and tainted `berth.dev/real-node=true` (NoSchedule): pods meant
for it carry a nodeSelector and a toleration; no other test's pod lands there.

The kubelet changes host sysctls when it starts; they are recorded before (`sysctls.json`) and
written back by `teardown`, which also kills every container process (from pid files and
/proc, so it works after a crash), unmounts what is mounted under the state directory, deletes
the pods' network namespaces, the bridge and every iptables chain kube-proxy and kubelet made.
`leftovers()` lists what a teardown missed (hack/test.sh fails on any).

Only the standard library is used; hack/cluster.py calls this and starts the processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

NODE_NAME = "berth-node-0"
BRIDGE = "berth0"
BRIDGE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
LABEL = "berth.dev/real-node"
#: Pods for the real node: `nodeSelector: {LABEL: "true"}` and this toleration.
TOLERATION = {"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
#: Marks the FORWARD rule this module adds, so teardown finds it.
RULE_COMMENT = "berth-real-node"
#: What kubelet (and kube-proxy, and this module) may change; restored on teardown.
SYSCTLS = (
    "net.ipv4.ip_forward",  # first: writing it resets every interface's `forwarding`
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.accept_redirects",  # the kernel flips it with forwarding
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.bridge.bridge-nf-call-iptables",  # pod -> pod on the bridge meets NetworkPolicy
)
#: Host folders that containerd, CNI and the kubelet use whatever their configured roots: those
#: this node created are removed on teardown (the kubelet's device-plugin socket, CNI results).
HOST_DIRS = (
    "/var/lib/kubelet",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/s",
    "/run/containerd",
    "/run/netns",
    "/var/log/containers",
)
CNI_RESULTS = Path("/var/lib/cni/results")
#: Host programs the node needs (hack/install-node-deps.sh installs them).
HOST_TOOLS = ("containerd", "runc", "ctr", "ip", "iptables", "nft", "mount", "umount")
#: kube-network-policies' nftables table (family, name). It can outlive the process (a re-sync
#: races its cleanup on SIGTERM; a crash has none), and then its queue, with no reader, drops
#: the traffic of every pod a policy selects: teardown deletes it.
NFT_TABLE = ("inet", "kube-network-policies")
CNI_PLUGINS = Path("/usr/lib/cni")


class Node:
    """Paths of one real node's state under `<state>/node`."""

    def __init__(self, state: Path):
        self.state = state
        self.dir = state / "node"
        self.containerd = self.dir / "containerd"
        self.socket = self.containerd / "containerd.sock"
        self.cni_bin, self.cni_conf = self.dir / "cni" / "bin", self.dir / "cni" / "net.d"
        self.ipam = self.dir / "cni" / "ipam"
        self.kubelet = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.sysctls = state / "sysctls.json"

    # -- host ---------------------------------------------------------------------------------

    def missing_host_tools(self) -> list[str]:
        missing = [t for t in HOST_TOOLS if not shutil.which(t)]
        plugins = (CNI_PLUGINS / p for p in ("bridge", "host-local", "loopback"))
        missing += [str(p) for p in plugins if not p.exists()]
        return missing

    def prepare_host(self) -> None:
        """Record the sysctls, create the bridge, allow forwarding on it only, write CNI config."""
        record = read_json(self.sysctls)
        if not record or record.get("restored", True):
            values = {k: v for k in SYSCTLS if (v := sysctl(k)) is not None}
            created = [d for d in HOST_DIRS if not Path(d).exists()]
            write_json(self.sysctls, {"values": values, "created": created, "restored": False})
        if not link_exists(BRIDGE):
            run("ip", "link", "add", BRIDGE, "type", "bridge")
            run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        rule = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment"]
        rule += ["--comment", RULE_COMMENT, "-j", "DROP"]
        if subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode:
            run("iptables", "-I", *rule)
        set_sysctl("net.ipv4.ip_forward", "1")  # pod -> ClusterIP -> pod; the rule keeps it here
        set_sysctl("net.bridge.bridge-nf-call-iptables", "1")

        for d in (self.cni_bin, self.cni_conf, self.ipam, self.kubelet, self.pod_logs):
            d.mkdir(parents=True, exist_ok=True)
        for plugin in ("bridge", "host-local", "loopback"):
            link = self.cni_bin / plugin
            link.unlink(missing_ok=True)
            link.symlink_to(CNI_PLUGINS / plugin)
        conf = {
            "cniVersion": "0.4.0",
            "name": "berth",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                        "routes": [{"dst": SERVICE_CIDR}],
                        "dataDir": str(self.ipam),
                    },
                }
            ],
        }
        # containerd adds the loopback network itself (with the plugin from cni_bin).
        write_json(self.cni_conf / "10-berth.conflist", conf)

    # -- configs ------------------------------------------------------------------------------

    def containerd_config(self, pause_ref: str) -> Path:
        root, state = self.containerd / "root", self.containerd / "state"
        text = f"""version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.containerd / "opt"}"

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
        Root = "{self.containerd / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.cni_bin}"
    conf_dir = "{self.cni_conf}"
    max_conf_num = 1
"""
        path = self.dir / "containerd.toml"
        path.write_text(text)
        return path

    def kubelet_config(self, pki: Path, port: int, healthz_port: int) -> Path:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": BRIDGE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
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
            "podLogsDir": str(self.pod_logs),
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
        path = self.dir / "kubelet.yaml"
        write_json(path, config)  # JSON is YAML
        return path

    def kube_proxy_config(self, kubeconfig: Path, healthz_port: int, metrics_port: int) -> Path:
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
        path = self.dir / "kube-proxy.yaml"
        write_json(path, config)
        return path

    def corefile(self, kubeconfig: Path, health_port: int, ready_port: int) -> Path:
        """CoreDNS on the bridge address, cluster zones only: no `forward`, no other zone."""
        path = self.dir / "Corefile"
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

    # -- images -------------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def import_archive(self, ref: str, archive: Path) -> bool:
        """`ctr images import` unless this very archive (path, size, mtime) was imported."""
        done_file = self.containerd / "root" / "berth-imported.json"
        done = read_json(done_file) or {}
        st = archive.stat()
        key = f"{st.st_size}:{st.st_mtime_ns}"
        present = ref in self.ctr("images", "ls", "-q", check=False).stdout.split()
        if done.get(str(archive)) == key and present:
            return False
        out = self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), check=False)
        if out.returncode:
            raise RuntimeError(f"ctr images import {archive} failed: {out.stderr.strip()}")
        done[str(archive)] = key
        write_json(done_file, done)
        return True

    def prune_replaced_images(self) -> list[str]:
        """Remove the CRI's `sha256:<id>` references to images whose tag now names another
        image (a rebuilt image imported again): they would keep every old build's layers."""
        rows = [r.split() for r in self.ctr("images", "ls", check=False).stdout.splitlines()[1:]]
        named = {r[2] for r in rows if len(r) > 2 and not r[0].startswith("sha256:")}
        stale = [
            r[0] for r in rows if len(r) > 2 and r[0].startswith("sha256:") and r[2] not in named
        ]
        if stale:
            self.ctr("images", "rm", "--sync", *stale, check=False)
        return stale

    # -- teardown -----------------------------------------------------------------------------

    def kill_containers(self) -> None:
        """With containerd still up: SIGKILL every task, delete tasks and containers, and drop
        the pods' network namespaces (which takes their veths with them)."""
        ids = self.ctr("containers", "ls", "-q", check=False).stdout.split()
        netns = set()
        for cid in ids:
            info = self.ctr("containers", "info", cid, check=False)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                spec = json.loads(info.stdout)["Spec"]
                for ns in spec["linux"]["namespaces"]:
                    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run"):
                        netns.add(ns["path"])
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
            if all(" RUNNING" not in r for r in rows):
                break
            time.sleep(0.2)
        for cid in ids:
            self.ctr("tasks", "delete", "-f", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
        for path in netns:
            delete_netns(Path(path))

    def teardown(self, kube_proxy: Path | None, containerd_was_running: bool) -> list[str]:
        """Everything on the host that `prepare_host` and the node's processes made; returns
        what could not be removed."""
        self.kill_shims()
        for name in bridge_netns():
            delete_netns(Path("/var/run/netns") / name)
        unmount_under(self.state)
        if kube_proxy and kube_proxy.exists():
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False)
        remove_kube_chains()
        if nft_table_exists():
            subprocess.run(["nft", "delete", "table", *NFT_TABLE], capture_output=True)
        if link_exists(BRIDGE):
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for result in cni_results():
            result.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            for link in Path("/var/log/containers").iterdir():
                if link.is_symlink() and str(os.readlink(link)).startswith(str(self.dir)):
                    link.unlink()
        record = read_json(self.sysctls)
        if isinstance(record, dict) and not record.get("restored"):
            for key, value in record["values"].items():
                set_sysctl(key, value)
            for folder in record.get("created", []):  # deepest first
                if folder == "/var/lib/kubelet":
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)  # only when empty
            record["restored"] = True
            write_json(self.sysctls, record)
        cri = self.containerd / "root" / "io.containerd.grpc.v1.cri"
        # After a crash containerd's metadata may still list containers: start it afresh.
        stale = [cri] if containerd_was_running else [self.containerd / "root"]
        scratch = [self.ipam, self.kubelet, self.pod_logs, self.containerd / "state"]
        for path in [*scratch, self.containerd / "runc", *stale]:
            if not mounted_under(path):
                shutil.rmtree(path, ignore_errors=True)
        return self.leftovers()

    def kill_shims(self) -> None:
        """SIGKILL this containerd's shims and their children (after a crash)."""
        pids = self.container_processes()
        sockets = [shim_socket(pid) for pid in pids]
        kill_processes(pids)
        for socket in sockets:  # a killed shim leaves it behind
            if socket:
                socket.unlink(missing_ok=True)

    def container_processes(self) -> list[int]:
        """Shims of this containerd and every process below them (the containers')."""
        shims = [
            pid
            for pid, cmd in processes().items()
            if b"containerd-shim" in cmd and str(self.socket).encode() in cmd
        ]
        children: dict[int, list[int]] = {}
        for pid in processes():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
                children.setdefault(ppid, []).append(pid)
        found, todo = [], list(shims)
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def leftovers(self) -> list[str]:
        """What a teardown should have removed and did not."""
        found = []
        if link_exists(BRIDGE):
            found.append(f"bridge {BRIDGE}")
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle", "raw"):
                out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
                found += [
                    f"{tool} -t {table}: {line}"
                    for line in out.stdout.splitlines()
                    if "KUBE-" in line or RULE_COMMENT in line
                ]
        if nft_table_exists():
            found.append("nftables table {} {}".format(*NFT_TABLE))
        found += [f"process {pid}" for pid in self.container_processes()]
        found += [f"mount {m}" for m in mounts_under(self.state)]
        found += [f"netns {n}" for n in bridge_netns()]
        found += [f"file {f}" for f in cni_results()]
        record = read_json(self.sysctls)
        record = record if isinstance(record, dict) else {}
        for key, value in record.get("values", {}).items():
            if sysctl(key) != value:
                found.append(f"sysctl {key} = {sysctl(key)} (was {value})")
        found += [f"folder {d}" for d in record.get("created", []) if Path(d).exists()]
        return found


def pause_image(binary: Path, ref: str, out: Path) -> Path:
    """A docker-archive with one layer holding `binary` as /pause (the image is FROM scratch);
    byte-for-byte the same for the same binary, so an import is skipped when nothing changed."""

    def tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data, mode in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, 0
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    layer = tar_bytes([("pause", binary.read_bytes(), 0o755)])
    diff_id = hashlib.sha256(layer).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": ["/pause"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "hack/realnode.py pause_image"}],
        },
        sort_keys=True,
    ).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [ref], "Layers": [f"{diff_id}.tar"]}]
    archive = tar_bytes(
        [
            (f"{diff_id}.tar", layer, 0o644),
            (f"{config_id}.json", config, 0o644),
            ("manifest.json", json.dumps(manifest).encode(), 0o644),
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_bytes() != archive:
        out.write_bytes(archive)
    return out


#: Images hack/build-images.sh lists that the node gets (the GPU trainer is of no use here).
NODE_IMAGES = ("operator", "trainer")


def listed_images(current: Path) -> list[tuple[str, Path]]:
    """(ref, archive) of hack/build-images.sh's list (`{"images": {target: {"ref", "archive"}}}`)
    for the node's targets whose archive exists."""
    data = read_json(current)
    images = data.get("images") or {} if isinstance(data, dict) else {}
    pairs = []
    for target in NODE_IMAGES:
        entry = images.get(target) or {}
        if entry.get("ref") and Path(entry.get("archive", "")).is_file():
            pairs.append((entry["ref"], Path(entry["archive"])))
    return pairs


# -- small host helpers -------------------------------------------------------------------------


def run(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def set_sysctl(key: str, value: str) -> None:
    if sysctl(key) not in (None, value):
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key.replace(".", "/")).write_text(value)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def processes() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
    return found


def kill_processes(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not zombie(p)]
        time.sleep(0.05)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=len, reverse=True)


def mounted_under(path: Path) -> bool:
    return path.exists() and bool(mounts_under(path))


def unmount_under(root: Path) -> None:
    for _ in range(3):  # stacked mounts need more than one pass
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)


def bridge_netns() -> list[str]:
    """Names of the network namespaces (/var/run/netns) at the other end of the bridge's veths."""
    links = subprocess.run(
        ["ip", "-j", "link", "show", "master", BRIDGE], capture_output=True, text=True
    )
    ids = {link.get("link_netnsid") for link in json.loads(links.stdout or "[]")} - {None}
    if not ids:
        return []
    spaces = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
    return [ns["name"] for ns in json.loads(spaces.stdout or "[]") if ns.get("id") in ids]


def cni_results() -> list[Path]:
    """libcni's cached results of this node's network (`berth`) and of the loopback network
    of the same sandboxes."""
    try:
        ours = [f for f in CNI_RESULTS.iterdir() if f.name.startswith("berth-")]
    except OSError:
        return []
    sandboxes = {f.name.split("-")[1] for f in ours}
    loopback = [CNI_RESULTS / f"cni-loopback-{s}-lo" for s in sandboxes]
    return ours + [f for f in loopback if f.exists()]


def shim_socket(pid: int) -> Path | None:
    """The socket of a containerd shim (containerd 1.6: /run/containerd/s/<sha256 of address,
    namespace and id>), from its command line; None for another process."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    if "containerd-shim" not in args[0] or not {"-namespace", "-id", "-address"} <= set(flags):
        return None
    key = os.path.join(flags["-address"], flags["-namespace"], flags["-id"])
    return Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()


def delete_netns(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)
    path.unlink(missing_ok=True)


def nft_table_exists() -> bool:
    if not shutil.which("nft"):  # a machine that never ran the real node
        return False
    listed = subprocess.run(["nft", "list", "table", *NFT_TABLE], capture_output=True)
    return listed.returncode == 0


def remove_kube_chains() -> None:
    """Delete every rule that jumps to a KUBE-* chain or carries RULE_COMMENT, then the chains:
    what kube-proxy --cleanup leaves (the kubelet's canaries) and what a crash left."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            lines = out.stdout.splitlines()
            for line in lines:
                rule = shlex.split(line)
                ours = "KUBE-" in line or RULE_COMMENT in line
                if ours and rule[:1] == ["-A"] and not rule[1].startswith("KUBE-"):
                    subprocess.run([tool, "-t", table, "-D", *rule[1:]], capture_output=True)
            chains = [line.split()[1] for line in lines if line.startswith("-N KUBE-")]
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)
