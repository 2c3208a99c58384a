#!/usr/bin/env python3
"""Checks the network sandbox in rendered kustomizations.

Usage: check_sandbox.py CLUSTER_NETWORKS_YAML RENDERED.yaml...
       check_sandbox.py --self-test CLUSTER_NETWORKS_YAML RENDERED.yaml...

For every build namespace (one that holds the `kiln-builder` ServiceAccount,
or that a rendered `kiln-policy` names):
  - a policy selects every pod for Ingress and no policy has an ingress rule;
  - a policy selects every pod for Egress, and every egress rule of every
    policy there is either DNS (kube-dns in kube-system, port 53) or an
    ipBlock: a wide one (0.0.0.0/0, ::/0) must except link-local (with the
    metadata endpoints), the private ranges and the cluster's pod and service
    ranges; a narrow one (a private endpoint) must be /24 or longer (/120),
    name its ports and touch none of link-local, pods or services;
  - DNS is allowed.
For Redis and RabbitMQ in kiln-system: every ingress rule names its peers,
and those are the worker's pods (whose labels must match the Deployment's),
the broker's own pods, or named namespaces for named ports only (KEDA's
operator on AMQP, Prometheus on the metrics port).

--self-test breaks the rendered policies one way at a time (drops each
`except` entry, adds an ingress rule, drops DNS, opens a broker to any pod)
and fails unless the check catches every one: a check that cannot fail is
no check.
"""

import copy
import ipaddress
import sys

import yaml

LINK_LOCAL = ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
# The metadata endpoints themselves must be excepted, whatever the entries.
METADATA = ["169.254.169.254/32", "fd00:ec2::254/128"]
PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
WIDE = {"0.0.0.0/0", "::/0"}
DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
WORKER_LABELS = {"app.kubernetes.io/name": "kiln-worker"}
BROKERS = {
    "redis": {"app.kubernetes.io/name": "redis"},
    "rabbitmq": {"app.kubernetes.io/name": "rabbitmq"},
}
# Namespaces that may reach a broker, and on which ports only.
NAMED_PEERS = {"keda": {5672, 5671}, "monitoring": {15692, 9121}}
KILN_SYSTEM = "kiln-system"


def net(cidr):
    return ipaddress.ip_network(cidr, strict=False)


def forbidden(networks):
    """What a build must never reach: (cidr, why)."""
    out = [(c, "link-local / cloud metadata") for c in LINK_LOCAL]
    out += [(c, "private range") for c in PRIVATE]
    for key in ("podCIDR", "serviceCIDR", "podCIDRv6", "serviceCIDRv6"):
        out.append((networks[key], f"cluster range {key}"))
    return out


def covered(cidr, excepts):
    n = net(cidr)
    return any(n.version == e.version and n.subnet_of(e) for e in excepts)


def listed(cidr, excepts):
    # Each range is listed itself, even inside a wider one (the cluster's
    # pod range inside 10/8): the list then survives a wider entry's removal,
    # and a missing entry shows that a replacement did not land.
    return net(cidr) in excepts


def selects_all(policy):
    sel = policy["spec"].get("podSelector") or {}
    return not sel.get("matchLabels") and not sel.get("matchExpressions")


def ports_of(rule):
    return {p.get("port") for p in rule.get("ports") or []}


def check_egress_rule(where, rule, bad, problems):
    peers = rule.get("to")
    if not peers:
        problems.append(f"{where}: egress rule without `to` allows every destination")
        return
    if all(p == DNS_PEER for p in peers):
        if not rule.get("ports") or ports_of(rule) != {53}:
            problems.append(f"{where}: DNS rule must be limited to port 53")
        return
    for peer in peers:
        block = peer.get("ipBlock")
        if block is None or len(peer) != 1:
            problems.append(f"{where}: egress to pods ({peer}) other than kube-dns")
            continue
        cidr = block["cidr"]
        excepts = []
        for e in block.get("except") or []:
            try:
                excepts.append(net(e))
            except ValueError:
                problems.append(f"{where}: except entry {e!r} is not a CIDR (placeholder left?)")
        if cidr in WIDE:
            for must, why in bad:
                if net(must).version == net(cidr).version and not listed(must, excepts):
                    problems.append(f"{where}: {cidr} does not except {must} ({why})")
            for must in METADATA:
                if net(must).version == net(cidr).version and not covered(must, excepts):
                    problems.append(f"{where}: {cidr} reaches the metadata endpoint {must}")
            continue
        n = net(cidr)
        if n.prefixlen < (24 if n.version == 4 else 120):
            problems.append(f"{where}: {cidr} is wider than one endpoint's /24 (/120)")
        if not rule.get("ports"):
            problems.append(f"{where}: the allow for {cidr} must name its ports")
        for must, why in bad:
            m = net(must)
            if why != "private range" and m.version == n.version and n.overlaps(m):
                problems.append(f"{where}: {cidr} reaches {must} ({why})")


def build_namespaces(objs):
    names = set()
    for o in objs:
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "kiln-builder":
            names.add(o["metadata"].get("namespace"))
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("kiln-policy"):
            for data in (o.get("data") or {}).values():
                for tenant in (yaml.safe_load(data) or {}).get("tenants", {}).values():
                    names.add(tenant.get("namespace"))
    return names


def check_build_namespace(src, ns, objs, bad, problems):
    pols = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"].get("namespace") == ns]
    if not any(selects_all(p) and "Ingress" in p["spec"].get("policyTypes", []) for p in pols):
        problems.append(f"{src}: build namespace {ns}: no policy denies ingress to every pod")
    if not any(selects_all(p) and "Egress" in p["spec"].get("policyTypes", []) for p in pols):
        problems.append(f"{src}: build namespace {ns}: no policy restricts egress of every pod")
    dns = False
    for p in pols:
        where = f"{src}: {ns}/{p['metadata']['name']}"
        for _ in p["spec"].get("ingress") or []:
            problems.append(f"{where}: has an ingress rule; builds accept no connections")
        for rule in p["spec"].get("egress") or []:
            check_egress_rule(where, rule, bad, problems)
            dns |= all(peer == DNS_PEER for peer in rule.get("to") or [{}]) and ports_of(rule) == {53}
    if not dns:
        problems.append(f"{src}: build namespace {ns}: DNS (kube-dns, port 53) is not allowed")


def matches(selector, labels):
    want = (selector or {}).get("matchLabels") or {}
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def check_brokers(src, objs, problems):
    system = [o for o in objs if o["metadata"].get("namespace") == KILN_SYSTEM]
    if not system:
        return
    worker = [
        o["spec"]["template"]["metadata"]["labels"]
        for o in system
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "kiln-worker"
    ]
    for name, labels in BROKERS.items():
        pols = [
            o for o in system
            if o["kind"] == "NetworkPolicy" and matches(o["spec"].get("podSelector"), labels)
        ]
        if not pols:
            problems.append(f"{src}: no NetworkPolicy in {KILN_SYSTEM} selects {name} ({labels})")
        for p in pols:
            where = f"{src}: {KILN_SYSTEM}/{p['metadata']['name']}"
            if "Ingress" not in p["spec"].get("policyTypes", []):
                problems.append(f"{where}: does not restrict ingress")
            for rule in p["spec"].get("ingress") or []:
                peers = rule.get("from")
                if not peers:
                    problems.append(f"{where}: ingress rule without `from` admits every pod")
                    continue
                for peer in peers:
                    if set(peer) == {"podSelector"}:
                        sel = peer["podSelector"]
                        if sel == {"matchLabels": WORKER_LABELS}:
                            if not any(matches(sel, w) for w in worker) and worker:
                                problems.append(f"{where}: worker selector matches no worker pod labels")
                            continue
                        if sel == {"matchLabels": labels}:
                            continue
                    # Another namespace by name (optionally some of its pods),
                    # on that namespace's ports only.
                    if "namespaceSelector" in peer and set(peer) <= {"namespaceSelector", "podSelector"}:
                        ns = (peer["namespaceSelector"].get("matchLabels") or {}).get(
                            "kubernetes.io/metadata.name"
                        )
                        allowed = NAMED_PEERS.get(ns)
                        if allowed and rule.get("ports") and ports_of(rule) <= allowed:
                            continue
                    problems.append(f"{where}: ingress from {peer} on {sorted(ports_of(rule)) or 'every port'}")


def check(networks, rendered):
    problems = []
    bad = forbidden(networks)
    for src, objs in rendered.items():
        for ns in sorted(n for n in build_namespaces(objs) if n):
            check_build_namespace(src, ns, objs, bad, problems)
        check_brokers(src, objs, problems)
    return problems


def mutations(rendered):
    """(description, broken copy) pairs, one per way of breaking the sandbox."""
    for src, objs in rendered.items():
        builds = build_namespaces(objs)
        for i, o in enumerate(objs):
            if o["kind"] != "NetworkPolicy":
                continue
            name = f"{src}: {o['metadata'].get('namespace')}/{o['metadata']['name']}"
            spec = o["spec"]
            sandbox = o["metadata"].get("namespace") in builds
            for r, rule in enumerate((spec.get("egress") or []) if sandbox else []):
                for p, peer in enumerate(rule.get("to") or []):
                    block = peer.get("ipBlock") or {}
                    if block.get("cidr") not in WIDE:
                        continue
                    for e in range(len(block.get("except") or [])):
                        broken = copy.deepcopy(rendered)
                        gone = broken[src][i]["spec"]["egress"][r]["to"][p]["ipBlock"]["except"].pop(e)
                        yield f"{name}: drop except {gone}", broken
                if rule.get("to") and all(peer == DNS_PEER for peer in rule["to"]):
                    broken = copy.deepcopy(rendered)
                    del broken[src][i]["spec"]["egress"][r]
                    yield f"{name}: drop the DNS rule", broken
            if sandbox and selects_all(o) and "Ingress" in spec.get("policyTypes", []):
                broken = copy.deepcopy(rendered)
                broken[src][i]["spec"]["ingress"] = [{"ports": [{"port": 8080}]}]
                yield f"{name}: add an ingress rule", broken
            broker = any(matches(spec.get("podSelector"), b) for b in BROKERS.values())
            for r, rule in enumerate(spec.get("ingress") or []):
                if not broker or "from" not in rule:
                    continue
                broken = copy.deepcopy(rendered)
                del broken[src][i]["spec"]["ingress"][r]["from"]
                yield f"{name}: ingress rule {r} from any pod", broken


def main(argv):
    self_test = argv[:1] == ["--self-test"]
    if self_test:
        argv = argv[1:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    networks = yaml.safe_load(open(argv[0]))["data"]
    rendered = {
        path: [d for d in yaml.safe_load_all(open(path)) if isinstance(d, dict)] for path in argv[1:]
    }
    problems = check(networks, rendered)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    if not self_test:
        print(f"sandbox: {len(rendered)} renderings ok")
        return 0
    missed = [d for d, broken in mutations(rendered) if not check(networks, broken)]
    count = sum(1 for _ in mutations(rendered))
    for d in missed:
        print(f"self-test: not caught: {d}", file=sys.stderr)
    if count == 0 or missed:
        return 1
    print(f"sandbox self-test: all {count} broken variants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
