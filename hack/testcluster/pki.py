"""The cluster's PKI: one CA, serving and client certificates per component, the
service-account key pair, and a kubeconfig per client."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from .config import PKI
from .realnode.components import COREDNS_USER, NETPOL_USER
from .realnode.node import BRIDGE_IP, NODE_NAME


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
        f"subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:{BRIDGE_IP},DNS:localhost,"
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
        kubelet_san = f"subjectAltName=IP:{BRIDGE_IP},DNS:{NODE_NAME}"
        certs |= {
            "kubelet": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", None, "clientAuth"),
            "kubelet-serving": (f"/CN={NODE_NAME}", kubelet_san, "serverAuth"),
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
