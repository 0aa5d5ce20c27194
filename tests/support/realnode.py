"""The real kubelet node of the test cluster (hack/cluster.py): placement, volumes, containers,
power.

Containers are seen and killed through containerd itself (`ctr` on the node's own socket), the
way an operator of the machine would, not through the API server. The node loses power and
boots through `hack/cluster.py kill-node` / `start-node` (hack/testcluster/realnode/power.py),
run as commands: they take the cluster's lock, and the node's processes are not pytest's
children.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from berth_trainer.synthetic import write_quickstart_corpus
from tests.conftest import cluster_command
from tests.support.tiny import tiny_config
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTER = Path(os.environ.get("BERTH_CLUSTER_DIR", REPO / ".cluster"))
#: containerd's namespace for Kubernetes (CRI) containers.
CRI_NAMESPACE = "k8s.io"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
#: The Berth images' user: a folder the workers write to is theirs.
IMAGE_UID = 65532


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@dataclasses.dataclass(frozen=True)
class RealNode:
    name: str
    label: tuple[str, str]
    taint: tuple[str, str, str]
    containerd_address: str
    images: tuple[str, ...]
    bridge_ip: str
    pod_cidr: str
    dns_ip: str
    cluster_domain: str
    pause_image: str

    @classmethod
    def from_cluster(cls) -> RealNode:
        """The node recorded in the cluster's state.json; fails when there is none."""
        state = json.loads((CLUSTER / "state.json").read_text())
        node = state.get("real_node")
        assert node, "the control plane has no real node (hack/cluster.py up without --kwok-only)"
        return cls(
            name=node["name"],
            label=(node["label"]["key"], node["label"]["value"]),
            taint=(node["taint"]["key"], node["taint"]["value"], node["taint"]["effect"]),
            containerd_address=node["containerd_address"],
            images=tuple(node.get("images") or ()),
            bridge_ip=node["bridge_ip"],
            pod_cidr=node["pod_cidr"],
            dns_ip=node["dns_ip"],
            cluster_domain=node["cluster_domain"],
            pause_image=node["pause_image"],
        )

    def image(self, target: str) -> str:
        """The ref of Berth image `target` ("operator", "trainer") imported into containerd."""
        refs = [ref for ref in self.images if f"/berth-{target}:" in ref]
        assert refs, f"no berth-{target} image on {self.name} ({self.images}): run `make images`"
        return refs[0]

    def placement(self) -> dict[str, Any]:
        """nodeSelector and tolerations that put a pod on this node (and only there)."""
        key, value, effect = self.taint
        return {
            "nodeSelector": {self.label[0]: self.label[1]},
            "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": effect}],
        }

    def volume_dir(self, name: str) -> Path:
        """A fresh folder on the node for a hostPath volume (its parents are traversable)."""
        root = CLUSTER / "volumes"
        root.mkdir(mode=0o755, exist_ok=True)
        root.chmod(0o755)
        path = root / name
        path.mkdir(mode=0o755)
        return path

    def ctr(self, *args: str) -> str:
        out = _run("ctr", "--address", self.containerd_address, "-n", CRI_NAMESPACE, *args)
        assert out.returncode == 0, f"ctr {' '.join(args)}: {out.stderr}"
        return out.stdout

    def container_ids(self, namespace: str) -> set[str]:
        """Every container (running or not) containerd holds for pods of `namespace`."""
        selector = f'labels."{POD_NAMESPACE_LABEL}"=={namespace}'
        return set(self.ctr("containers", "ls", "-q", selector).split())

    def tasks(self) -> dict[str, tuple[int, str]]:
        """Every container's task: id → (host pid, status such as RUNNING or STOPPED)."""
        rows = (line.split() for line in self.ctr("tasks", "ls").splitlines()[1:])
        return {row[0]: (int(row[1]), row[-1]) for row in rows}

    def running_containers(self, namespace: str) -> set[str]:
        """Containers of `namespace`'s pods whose task (process) is running."""
        running = {cid for cid, (_, status) in self.tasks().items() if status == "RUNNING"}
        return running & self.container_ids(namespace)

    def kill_container(self, namespace: str, pod: str, container: str = "trainer") -> str:
        """SIGKILL the running `container` of `pod` in containerd; returns its id."""
        out = _run("kubectl", "get", "pod", pod, "-n", namespace, "-o", "json")
        assert out.returncode == 0, out.stderr
        statuses = json.loads(out.stdout)["status"].get("containerStatuses") or []
        (status,) = (s for s in statuses if s["name"] == container)
        container_id = str(status["containerID"]).split("://", 1)[1]
        self.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        return container_id

    @contextlib.contextmanager
    def advertised(self, resource: str, quantity: str) -> Iterator[None]:
        """The node advertises an extended resource (as a device plugin would) for a while."""
        path = "/status/capacity/" + resource.replace("~", "~0").replace("/", "~1")

        def patch(op: dict[str, Any]) -> None:
            out = _run(
                "kubectl", "patch", "node", self.name, "--subresource=status",
                "--type=json", "-p", json.dumps([op]),
            )  # fmt: skip
            assert out.returncode == 0, out.stderr

        def allocatable() -> str | None:
            out = _run("kubectl", "get", "node", self.name, "-o", "json")
            return json.loads(out.stdout)["status"].get("allocatable", {}).get(resource)

        patch({"op": "add", "path": path, "value": quantity})
        try:
            wait_for(lambda: allocatable() == quantity, timeout=60, what=f"{resource} allocatable")
            yield
        finally:
            patch({"op": "remove", "path": path})

    @contextlib.contextmanager
    def claimed_corpus(self, api: client.ApiClient, namespace: str, claim: str) -> Iterator[Path]:
        """A fresh folder on the node holding the quickstart corpus (`corpus/`), owned by the
        images' user and claimed in `namespace` as PersistentVolumeClaim `claim`: a hostPath
        PersistentVolume that an admin made, as Pod Security `restricted` allows (pods name
        only the claim). `tiny_training` reads it at /data. The volume and folder go at the end."""
        path = self.volume_dir(namespace)
        write_quickstart_corpus(path / "corpus", seed=1, documents=60)
        for root, dirs, files in os.walk(path):
            for entry in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.chown(entry, IMAGE_UID, IMAGE_UID)
        core, volume = client.CoreV1Api(api), f"{namespace}-{claim}"
        core.create_persistent_volume(
            {
                "metadata": {"name": volume, "labels": {"berth.dev/test": "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        try:
            core.create_namespaced_persistent_volume_claim(
                namespace,
                {
                    "metadata": {"name": claim},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "",
                        "volumeName": volume,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
            wait_for(
                lambda: (
                    core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase
                    == "Bound"
                ),
                timeout=60,
                what=f"claim {claim} Bound",
            )
            yield path
        finally:
            core.delete_persistent_volume(volume)
            shutil.rmtree(path, ignore_errors=True)

    def tiny_training(self, name: str, steps: int, claim: str, **spec: Any) -> dict[str, Any]:
        """A tiny 2-worker BertTraining pre-training on this node, checkpointing every 10 steps;
        /data is the claim `claim` of `claimed_corpus` (corpus in; `<name>/ckpt` and
        `<name>/model` out). Keyword arguments override spec fields."""
        return {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "BertTraining",
            "metadata": {"name": name},
            "spec": {
                **tiny_config(
                    "/data/corpus/vocab.txt",
                    "/data/corpus/corpus-*.txt",
                    steps=steps,
                    checkpoint_dir=f"/data/{name}/ckpt",
                    output_dir=f"/data/{name}/model",
                ),
                "workers": 2,
                "runPolicy": {"restartPolicy": "OnFailure", "backoffLimit": 2},
                "podTemplate": {
                    "spec": {
                        **self.placement(),
                        "terminationGracePeriodSeconds": 5,
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
                        ],
                        "containers": [
                            {
                                "name": "trainer",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                    }
                },
                **spec,
            },
        }

    @contextlib.contextmanager
    def power_loss(self) -> Iterator[None]:
        """The node loses power for the `with` block (`hack/cluster.py kill-node`: its kubelet,
        containerd, shims and containers get SIGKILL; the API objects stay) and boots at its end
        (`start-node`, which returns once the node is Ready and untainted), also when the block
        fails: the tests after this one need the node."""
        _node_command("kill-node")
        try:
            yield
        finally:
            _node_command("start-node")


def _node_command(command: str) -> None:
    out = cluster_command(command, timeout=300)
    assert out.returncode == 0, f"hack/cluster.py {command}:\n{out.stdout}{out.stderr}"
