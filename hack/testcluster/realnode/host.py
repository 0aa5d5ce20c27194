"""The real node's host: its bridge, sysctls, iptables rule and CNI configuration, and the
helpers that find and remove what the node's processes leave on the host (network namespaces,
mounts, iptables chains, the nftables table, CNI results)."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path

from .node import BRIDGE, BRIDGE_IP, POD_CIDR, SERVICE_CIDR, Node, read_json, write_json

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


def missing_host_tools() -> list[str]:
    missing = [t for t in HOST_TOOLS if not shutil.which(t)]
    plugins = (CNI_PLUGINS / p for p in ("bridge", "host-local", "loopback"))
    missing += [str(p) for p in plugins if not p.exists()]
    return missing


def prepare_host(node: Node) -> None:
    """Record the sysctls, create the bridge, allow forwarding on it only, write CNI config."""
    record = read_json(node.sysctls)
    if not record or record.get("restored", True):
        values = {k: v for k in SYSCTLS if (v := sysctl(k)) is not None}
        created = [d for d in HOST_DIRS if not Path(d).exists()]
        write_json(node.sysctls, {"values": values, "created": created, "restored": False})
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

    for d in (node.cni_bin, node.cni_conf, node.ipam, node.kubelet, node.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    for plugin in ("bridge", "host-local", "loopback"):
        link = node.cni_bin / plugin
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
                    "dataDir": str(node.ipam),
                },
            }
        ],
    }
    # containerd adds the loopback network itself (with the plugin from cni_bin).
    write_json(node.cni_conf / "10-berth.conflist", conf)


def run(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")


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


def delete_netns(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)
    path.unlink(missing_ok=True)


def delete_nft_table() -> None:
    """Delete kube-network-policies' table, whose queue no process reads any more."""
    if nft_table_exists():
        subprocess.run(["nft", "delete", "table", *NFT_TABLE], capture_output=True)


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
