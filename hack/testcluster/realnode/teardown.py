"""Undo the real node on the host, also after a crash; list what is left."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from .containerd import container_processes, kill_shims
from .host import (
    NFT_TABLE,
    RULE_COMMENT,
    bridge_netns,
    cni_results,
    delete_netns,
    delete_nft_table,
    link_exists,
    mounted_under,
    mounts_under,
    nft_table_exists,
    remove_kube_chains,
    set_sysctl,
    sysctl,
    unmount_under,
)
from .node import BRIDGE, Node, read_json, write_json


def teardown(node: Node, kube_proxy: Path | None, containerd_was_running: bool) -> list[str]:
    """Everything on the host that `prepare_host` and the node's processes made; returns
    what could not be removed."""
    kill_shims(node)
    for name in bridge_netns():
        delete_netns(Path("/var/run/netns") / name)
    unmount_under(node.state)
    if kube_proxy and kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False)
    remove_kube_chains()
    delete_nft_table()
    if link_exists(BRIDGE):
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    for result in cni_results():
        result.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        for link in Path("/var/log/containers").iterdir():
            if link.is_symlink() and str(os.readlink(link)).startswith(str(node.dir)):
                link.unlink()
    record = read_json(node.sysctls)
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
        write_json(node.sysctls, record)
    cri = node.containerd / "root" / "io.containerd.grpc.v1.cri"
    # After a crash containerd's metadata may still list containers: start it afresh.
    stale = [cri] if containerd_was_running else [node.containerd / "root"]
    scratch = [node.ipam, node.kubelet, node.pod_logs, node.containerd / "state"]
    for path in [*scratch, node.containerd / "runc", *stale]:
        if not mounted_under(path):
            shutil.rmtree(path, ignore_errors=True)
    return leftovers(node)


def leftovers(node: Node) -> list[str]:
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
    found += [f"process {pid}" for pid in container_processes(node)]
    found += [f"mount {m}" for m in mounts_under(node.state)]
    found += [f"netns {n}" for n in bridge_netns()]
    found += [f"file {f}" for f in cni_results()]
    record = read_json(node.sysctls)
    record = record if isinstance(record, dict) else {}
    for key, value in record.get("values", {}).items():
        if sysctl(key) != value:
            found.append(f"sysctl {key} = {sysctl(key)} (was {value})")
    found += [f"folder {d}" for d in record.get("created", []) if Path(d).exists()]
    return found
