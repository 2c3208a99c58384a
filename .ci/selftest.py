"""The verdict of a checker's --self-test, shared by the .ci/check_*.py that
use it: the unbroken input must pass, and every break must be caught."""

import sys


def verdict(label, clean_problems, breaks):
    """`breaks` maps what was broken to a function returning the problems
    the check finds in the broken input. Prints the verdict; returns the
    exit code."""
    failures = []
    if clean_problems:
        failures.append(f"the unbroken input already fails: {clean_problems}")
    failures += [f"not caught: {name}" for name, problems in breaks.items() if not problems()]
    for line in failures:
        print(f"self-test: {line}", file=sys.stderr)
    if not failures:
        print(f"{label} self-test: {len(breaks)} breaks, each caught")
    return 1 if failures else 0
