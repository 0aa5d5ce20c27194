#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback for Berth's tests: `up`, `down`, `status`.

Starts etcd, kube-apiserver (RBAC on), kube-controller-manager (garbage collection and the
other default controllers), kube-scheduler and KWOK managing fake nodes, from the binaries that
hack/build-control-plane.sh builds into the cache. Everything lives under `.cluster/` in the
repository (git-ignored): PKI, kubeconfigs, logs, pid files, etcd data and `bin/` links to the
binaries. `up` is idempotent; ports are picked free at start.

    python3 hack/cluster.py up       # prints how to use .cluster/kubeconfig
    python3 hack/cluster.py down
    python3 hack/cluster.py restart-apiserver   # same port, same etcd: watches must reconnect

Only the standard library is used, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
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

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
STATE = Path(os.environ.get("BERTH_CLUSTER_DIR", REPO / ".cluster"))
PKI, LOGS, PIDS = STATE / "pki", STATE / "logs", STATE / "pids"
KUBECONFIG = STATE / "kubeconfig"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
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


def binaries() -> dict[str, Path]:
    v = versions()
    cache = Path(
        os.environ.get("BERTH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "berth"
    )
    k8s = v["KUBERNETES_VERSION"]
    wanted = {
        "etcd": v["ETCD_VERSION"],
        "kube-apiserver": k8s,
        "kube-controller-manager": k8s,
        "kube-scheduler": k8s,
        "kubectl": k8s,
        "kwok": v["KWOK_VERSION"],
        "helm": v["HELM_VERSION"],
    }
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


def make_pki() -> None:
    """One CA, a serving cert, client certs per component, and the service-account key pair."""
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
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc"
    )
    certs = {
        "apiserver": ("/CN=kube-apiserver", sans, "serverAuth"),
        "admin": ("/O=system:masters/CN=berth-admin", None, "clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", None, "clientAuth"),
        "scheduler": ("/CN=system:kube-scheduler", None, "clientAuth"),
        "kwok": ("/O=system:masters/CN=kwok", None, "clientAuth"),
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


def apiserver_ready(port: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=2
        ) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def etcd_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries()["kubectl"]), "--kubeconfig", str(KUBECONFIG), *args],
        check=check,
        capture_output=True,
        text=True,
    )


def nodes_ready() -> bool:
    out = kubectl("get", "nodes", "-o", "json", check=False)
    if out.returncode:
        return False
    items = json.loads(out.stdout)["items"]
    return len(items) >= 4 and all(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
        for n in items
    )


def running() -> bool:
    state = STATE / "state.json"
    if not state.exists() or not all(pid_alive(c) for c in COMPONENTS):
        return False
    return apiserver_ready(json.loads(state.read_text())["apiserver_port"])


def up() -> None:
    if running():
        print_usage()
        return
    stop_all()
    bins = binaries()
    for d in (PKI, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    make_pki()
    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kwok")}
    server = f"https://127.0.0.1:{ports['apiserver']}"
    for user in ("admin", "controller-manager", "scheduler", "kwok"):
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
    wait_until("etcd health", lambda: etcd_ready(ports["etcd"]), 30, "etcd")

    start(
        "kube-apiserver",
        [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={PKI / 'apiserver.crt'}",
            f"--tls-private-key-file={PKI / 'apiserver.key'}",
            f"--client-ca-file={PKI / 'ca.crt'}",
            f"--service-account-key-file={PKI / 'sa.pub'}",
            f"--service-account-signing-key-file={PKI / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
    )
    wait_until(
        "kube-apiserver /readyz", lambda: apiserver_ready(ports["apiserver"]), 90, "kube-apiserver"
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
    (STATE / "state.json").write_text(
        json.dumps(
            {"apiserver_port": ports["apiserver"], "server": server, "ports": ports}, indent=2
        )
    )

    wait_until(
        "the default namespace",
        lambda: kubectl("get", "namespace", "default", check=False).returncode == 0,
        30,
        "kube-apiserver",
    )
    kubectl("apply", "--server-side", "-f", str(HACK / "kwok" / "nodes.yaml"))
    wait_until("4 KWOK nodes Ready", nodes_ready, 60, "kwok")
    wait_until(
        "the default ServiceAccount",
        lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
        "kube-controller-manager",
    )
    print(f"control plane up in {time.monotonic() - t0:.1f}s")
    print_usage()


def print_usage() -> None:
    print(
        f"kubeconfig: {KUBECONFIG}\n"
        f"  export KUBECONFIG={KUBECONFIG} PATH={STATE / 'bin'}:$PATH\n"
        "  kubectl get nodes\n"
        f"logs: {LOGS}/; stop with `make cluster-down`"
    )


def stop(names: tuple[str, ...]) -> None:
    """SIGTERM the components' process groups; SIGKILL what is left after 15 s."""
    procs = []
    for name in names:
        if pid_alive(name):
            pid = int((PIDS / f"{name}.pid").read_text())
            procs.append((name, pid))
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
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


def restart_apiserver() -> None:
    """Stop kube-apiserver and start it again on the same port (tests of watch reconnects)."""
    if not running():
        sys.exit("error: the control plane is not running")
    argv = json.loads((PIDS / "kube-apiserver.argv").read_text())
    stop(("kube-apiserver",))
    start("kube-apiserver", argv)
    port = json.loads((STATE / "state.json").read_text())["apiserver_port"]
    wait_until("kube-apiserver /readyz", lambda: apiserver_ready(port), 90, "kube-apiserver")
    print("kube-apiserver restarted")


def stop_all() -> None:
    stop(tuple(reversed(COMPONENTS)))
    for path in (PIDS, STATE / "etcd", PKI, STATE / "state.json"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "restart-apiserver"])
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    # One `up`/`down` at a time: concurrent test sessions share the cluster instead of racing.
    lock = open(STATE / "lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    if args.command == "up":
        up()
    elif args.command == "restart-apiserver":
        restart_apiserver()
    elif args.command == "down":
        stop_all()
        print("control plane stopped")
    else:
        ok = running()
        print("running" if ok else "not running")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
