#!/usr/bin/env python3
"""Checks the rendered KEDA overlay: the trigger reads <prefix>.builds (the
worker's KILN_AMQP_PREFIX), TLS settings reach the scaler, a fallback is set,
and no cooldownPeriod pretends to act while minReplicaCount > 0 (KEDA applies
it only to scaling to zero).

Usage: check_keda.py RENDERED.yaml
"""

import sys

import yaml


def check(objs):
    problems = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    settings = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"].startswith("kiln-worker")]
    prefix = (settings[0].get("data") or {}).get("KILN_AMQP_PREFIX", "kiln") if settings else "kiln"
    for so in by_kind.get("ScaledObject", []):
        spec = so["spec"]
        name = so["metadata"]["name"]
        if (spec.get("minReplicaCount") or 0) > 0 and "cooldownPeriod" in spec:
            problems.append(f"ScaledObject {name}: cooldownPeriod does nothing with minReplicaCount > 0")
        fallback = spec.get("fallback") or {}
        if not fallback.get("failureThreshold") or not fallback.get("replicas"):
            problems.append(f"ScaledObject {name}: no fallback (failureThreshold and replicas)")
        for trigger in spec.get("triggers", []):
            if trigger["type"] != "rabbitmq":
                continue
            queue = trigger["metadata"].get("queueName")
            if queue != f"{prefix}.builds":
                problems.append(f"ScaledObject {name}: queueName {queue}, but the worker consumes {prefix}.builds")
            auth = trigger.get("authenticationRef", {}).get("name")
            ta = [t for t in by_kind.get("TriggerAuthentication", []) if t["metadata"]["name"] == auth]
            params = {r["parameter"] for t in ta for r in t["spec"].get("secretTargetRef", [])}
            for needed in ("host", "tls", "ca"):
                if needed not in params:
                    problems.append(f"TriggerAuthentication {auth}: parameter {needed} is not mapped")
            if ("cert" in params) != ("key" in params):
                problems.append(f"TriggerAuthentication {auth}: cert and key go together")
    if not by_kind.get("ScaledObject"):
        problems.append("no ScaledObject rendered")
    return problems


def main(argv):
    objs = [d for d in yaml.safe_load_all(open(argv[0])) if isinstance(d, dict)]
    problems = check(objs)
    for line in problems:
        print(f"{argv[0]}: {line}", file=sys.stderr)
    if not problems:
        print("keda: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
