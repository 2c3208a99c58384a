#!/usr/bin/env python3
"""Every alert in a Prometheus rule file must have, in its promtool test
file, at least one case where it fires and one where it stays quiet: a rule
that can never fire (or always fires) then fails `promtool test rules`.

Usage: check_rule_tests.py RULES.yaml TESTS.yaml
"""

import sys

import yaml


def main(argv):
    rules = yaml.safe_load(open(argv[0]))
    tests = yaml.safe_load(open(argv[1]))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    firing, quiet = set(), set()
    for test in tests.get("tests", []):
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = []
    for alert in sorted(alerts):
        if alert not in firing:
            problems.append(f"{argv[1]}: no case where {alert} fires")
        if alert not in quiet:
            problems.append(f"{argv[1]}: no case where {alert} stays quiet")
    for unknown in sorted((firing | quiet) - alerts):
        problems.append(f"{argv[1]}: tests {unknown}, which {argv[0]} does not define")
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"rule tests: {len(alerts)} alerts, each with a firing and a quiet case")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
