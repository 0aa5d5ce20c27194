"""The real node of the test cluster: one node, `berth-node-0`, running real containers beside
the KWOK nodes.

containerd (own root, state and socket under `.cluster/node/`), kubelet, kube-proxy
(iptables), a slim CoreDNS and kube-network-policies, which enforces NetworkPolicy with its
nftables table: it queues new connections to and from pods that a policy selects to itself
(nfqueue) and lets through only what the policies allow. Traffic between two pods on the bridge
passes the IP hooks it uses because bridged packets are handed to them
(`net.bridge.bridge-nf-call-iptables`); the host's own connections to pods (10.244.0.1) are
judged too. Pods sit on a bridge made here, `berth0` (10.244.0.1/24), with no default route:
only the bridge subnet and a route to the Service CIDR through the bridge address, where
kube-apiserver, CoreDNS and kube-proxy's DNAT answer. A FORWARD rule drops anything that enters
from the bridge and would leave by another interface, so nothing a pod sends leaves the machine.
The node is labelled and tainted `berth.dev/real-node=true` (NoSchedule): pods meant for it
carry a nodeSelector and a toleration; no other test's pod lands there.

The kubelet changes host sysctls when it starts; they are recorded before (`sysctls.json`) and
written back by the teardown, which also kills every container process (from pid files and
/proc, so it works after a crash), unmounts what is mounted under the state directory, deletes
the pods' network namespaces, the bridge and every iptables chain kube-proxy and kubelet made.
`leftovers()` lists what a teardown missed (hack/test.sh fails on any).

Modules:

    node        names, addresses and the paths of the node's state
    host        the bridge, sysctls, iptables and nftables, mounts and network namespaces
    teardown    undo it all (also after a crash or a power loss); `leftovers`
    configs     containerd's, the kubelet's, kube-proxy's and CoreDNS's configuration
    containerd  `ctr`, the shims and the containers' processes
    images      the pause image and the imported Berth images
    components  the node's processes and their RBAC
    power       `kill-node` (power loss) and `start-node` (boot)
"""
