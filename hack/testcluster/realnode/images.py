"""The real node's images: the pause image made here, and the Berth images that
hack/build-images.sh lists, imported into containerd (no registry is reachable)."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from ..config import cache_dir, write_state
from .containerd import ctr
from .node import Node, read_json, write_json


def import_archive(node: Node, ref: str, archive: Path) -> bool:
    """`ctr images import` unless this very archive (path, size, mtime) was imported."""
    done_file = node.containerd / "root" / "berth-imported.json"
    done = read_json(done_file) or {}
    st = archive.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    present = ref in ctr(node, "images", "ls", "-q", check=False).stdout.split()
    if done.get(str(archive)) == key and present:
        return False
    out = ctr(node, "images", "import", "--snapshotter", "overlayfs", str(archive), check=False)
    if out.returncode:
        raise RuntimeError(f"ctr images import {archive} failed: {out.stderr.strip()}")
    done[str(archive)] = key
    write_json(done_file, done)
    return True


def prune_replaced_images(node: Node) -> list[str]:
    """Remove the CRI's `sha256:<id>` references to images whose tag now names another
    image (a rebuilt image imported again): they would keep every old build's layers."""
    rows = [r.split() for r in ctr(node, "images", "ls", check=False).stdout.splitlines()[1:]]
    named = {r[2] for r in rows if len(r) > 2 and not r[0].startswith("sha256:")}
    stale = [r[0] for r in rows if len(r) > 2 and r[0].startswith("sha256:") and r[2] not in named]
    if stale:
        ctr(node, "images", "rm", "--sync", *stale, check=False)
    return stale


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
            # The label of the first version, kept: the image stays the same for the same binary.
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


def import_images(node: Node, state: dict[str, Any]) -> None:
    """Import the images hack/build-images.sh listed (archives that exist); print what."""
    current = cache_dir() / "images" / "current.json"
    listed = listed_images(current)
    if not listed:
        print(f"no images to import ({current}: none listed, or no archive)")
    refs = []
    for ref, archive in listed:
        t = time.monotonic()
        try:
            imported = import_archive(node, ref, archive)
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
    if stale := prune_replaced_images(node):
        print(f"removed {len(stale)} replaced image(s) from containerd")
    real = state["real_node"]
    assert isinstance(real, dict)
    real["images"] = [real["pause_image"], *refs]
    write_state(state)
