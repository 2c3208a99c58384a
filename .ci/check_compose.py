#!/usr/bin/env python3
"""Checks docker-compose.yml for the mistakes that stop it on a clean machine.

Usage: check_compose.py [--self-test] docker-compose.yml

The Compose Specification schema accepts all of these; a real engine then
fails or misbehaves:
  - two services that `build:` the same image tag (Compose builds them
    concurrently and the second fails: image already exists);
  - a service that runs an image another service builds, without
    `pull_policy: never` (Compose tries the registry first), and a builder
    whose pull_policy lets it pull a same-named image from a registry;
  - a published host port that clashes with what a developer runs locally
    (RabbitMQ 5672/15672/25672/4369, Redis 6379, macOS AirPlay 5000,
    Kubernetes 6443, Prometheus 9090) or that binds every interface;
  - depends_on without a condition (list form, or a mapping entry without
    `condition`), or with service_started, which waits for nothing;
  - depends_on a service that has no health check (unless it is a one-shot
    awaited with service_completed_successfully);
  - Redis or RabbitMQ on a network shared with k3s or the registry, where
    builds run or push.
Values are checked with their `${VAR:-default}` defaults.

--self-test breaks the file one way at a time and fails unless each break
is caught.
"""

import copy
import re
import sys

import yaml

CLASHING_PORTS = {
    5000: "macOS AirPlay receiver",
    4369: "epmd of a local RabbitMQ",
    5671: "a local RabbitMQ (AMQPS)",
    5672: "a local RabbitMQ",
    15672: "a local RabbitMQ management UI",
    25672: "a local RabbitMQ's Erlang distribution",
    6379: "a local Redis",
    6443: "a local Kubernetes API server",
    9090: "a local Prometheus",
}
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
# Services that must share no network: Kiln's state and where builds run.
STATE = {"rabbitmq", "redis"}
BUILDS = {"k3s", "registry"}


def interpolate(text):
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} / $$, with defaults."""

    def one(m):
        if m.group(0) == "$$":
            return "$"
        return m.group("default") or ""

    return re.sub(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}", one, text)


def networks_of(svc):
    if svc.get("network_mode"):
        return set()
    nets = svc.get("networks")
    if nets is None:
        return {"default"}
    return set(nets)


def published(entry):
    """(host_ip, host_port) of one `ports` entry, host_port None if random."""
    if isinstance(entry, dict):
        port = entry.get("published")
        return entry.get("host_ip"), int(str(port).split("-")[0]) if port else None
    spec = str(entry).split("/")[0]
    # [ip:][host:]container, where ip may be [v6].
    m = re.fullmatch(r"(?:(?P<ip>\[[^\]]+\]|[^:]+):)?(?:(?P<host>[\d-]+):)?(?P<container>[\d-]+)", spec)
    if not m:
        return None, None
    ip, host = m.group("ip"), m.group("host")
    if host is None and ip is not None and ip.isdigit():
        ip, host = None, ip
    return ip, int(host.split("-")[0]) if host else None


def check(doc):
    problems = []
    services = doc.get("services") or {}
    builders = {}
    for name, svc in services.items():
        if svc.get("build") is not None:
            tag = svc.get("image") or f"{doc.get('name', 'project')}-{name}"
            if tag in builders:
                problems.append(
                    f"services {builders[tag]} and {name} both build {tag}: build it in one, "
                    f"give the other `image: {tag}` and `pull_policy: never`"
                )
            builders.setdefault(tag, name)
            if svc.get("image") and svc.get("pull_policy") not in ("build", "never"):
                problems.append(
                    f"service {name}: builds {tag} but may pull it first; set pull_policy: build"
                )
    for name, svc in services.items():
        image = svc.get("image")
        if svc.get("build") is None and image in builders and svc.get("pull_policy") != "never":
            problems.append(
                f"service {name}: runs {image}, built by {builders[image]}; set pull_policy: never "
                "so Compose does not look for it in a registry"
            )
        for entry in svc.get("ports") or []:
            ip, port = published(entry)
            if port in CLASHING_PORTS:
                problems.append(
                    f"service {name}: publishes host port {port}, taken by {CLASHING_PORTS[port]}; "
                    "use another default"
                )
            if port is not None and ip not in LOOPBACK:
                problems.append(
                    f"service {name}: publishes host port {port} on every interface; "
                    "bind it to 127.0.0.1"
                )
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(
                f"service {name}: depends_on {deps} without a condition waits only for the "
                "containers to start; use the mapping form with condition"
            )
            deps = {}
        for dep, how in deps.items():
            condition = (how or {}).get("condition")
            target = services.get(dep)
            if target is None:
                problems.append(f"service {name}: depends_on unknown service {dep}")
                continue
            if condition is None:
                problems.append(f"service {name}: depends_on {dep} without a condition")
            elif condition == "service_started":
                problems.append(
                    f"service {name}: depends_on {dep} with service_started waits for nothing; "
                    "give it a health check and use service_healthy"
                )
            if condition == "service_completed_successfully":
                continue
            hc = target.get("healthcheck")
            if not hc or hc.get("disable") or hc.get("test") in (["NONE"], "NONE"):
                problems.append(f"service {name}: depends_on {dep}, which has no health check")
    for a in sorted(STATE & set(services)):
        for b in sorted(BUILDS & set(services)):
            shared = networks_of(services[a]) & networks_of(services[b])
            if shared:
                problems.append(
                    f"services {a} and {b} share network(s) {sorted(shared)}: builds could reach {a}"
                )
    return problems


def mutations(doc):
    services = doc["services"]
    for name, svc in services.items():
        if svc.get("build") is None and svc.get("image") in {
            s.get("image") for s in services.values() if s.get("build") is not None
        }:
            broken = copy.deepcopy(doc)
            builder = next(s for s in services.values() if s.get("image") == svc["image"] and s.get("build"))
            broken["services"][name]["build"] = copy.deepcopy(builder["build"])
            yield f"{name} builds the same tag as well", broken
            broken = copy.deepcopy(doc)
            broken["services"][name].pop("pull_policy", None)
            yield f"{name} without pull_policy", broken
        for port in (5672, 6379, 5000, 15672):
            broken = copy.deepcopy(doc)
            broken["services"][name].setdefault("ports", []).append(f"127.0.0.1:{port}:{port}")
            yield f"{name} publishes {port}", broken
        for i, entry in enumerate(svc.get("ports") or []):
            broken = copy.deepcopy(doc)
            broken["services"][name]["ports"][i] = str(entry).split(":", 1)[1]
            yield f"{name} publishes {entry} on every interface", broken
        for dep in svc.get("depends_on") or {}:
            broken = copy.deepcopy(doc)
            broken["services"][name]["depends_on"][dep].pop("condition")
            yield f"{name} depends_on {dep} without condition", broken
            broken = copy.deepcopy(doc)
            broken["services"][name]["depends_on"] = list(svc["depends_on"])
            yield f"{name} depends_on as a list", broken
            cond = svc["depends_on"][dep].get("condition")
            if cond == "service_healthy":
                broken = copy.deepcopy(doc)
                broken["services"][dep].pop("healthcheck")
                yield f"{dep} without health check", broken
    for a in STATE & set(services):
        for b in BUILDS & set(services):
            broken = copy.deepcopy(doc)
            nets = broken["services"][b].get("networks") or {}
            broken["services"][a]["networks"] = sorted(nets) if nets else ["default"]
            yield f"{a} on the network of {b}", broken


def main(argv):
    self_test = argv[:1] == ["--self-test"]
    if self_test:
        argv = argv[1:]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    doc = yaml.safe_load(interpolate(open(argv[0]).read()))
    problems = check(doc)
    for line in problems:
        print(f"{argv[0]}: {line}", file=sys.stderr)
    if problems:
        return 1
    if not self_test:
        print(f"compose: {len(doc['services'])} services ok")
        return 0
    variants = list(mutations(doc))
    missed = [d for d, broken in variants if not check(broken)]
    for d in missed:
        print(f"self-test: not caught: {d}", file=sys.stderr)
    if not variants or missed:
        return 1
    print(f"compose self-test: all {len(variants)} broken variants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
