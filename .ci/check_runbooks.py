#!/usr/bin/env python3
"""Every alert of a Prometheus rule file has a runbook_url annotation that
points at a section of docs/operations.md which exists and says something.

The URL is the repository's (Cargo.toml `repository`) file on main,
  <repository>/blob/main/docs/operations.md#<anchor>
so it opens on GitHub from an alert, and <anchor> must be one of the
heading anchors GitHub renders for that file (lower case, punctuation
dropped, spaces to hyphens, -1/-2 for repeats; headings inside code blocks
are not headings). The section under it (up to the next heading of the same
or a higher level) must hold at least MIN_WORDS words: a heading alone is not
a runbook.

Usage: check_runbooks.py [--self-test] RULES.yaml docs/operations.md
"""

import pathlib
import re
import sys
import tomllib

import yaml

import selftest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIN_WORDS = 40


def base_url():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    repository = (cargo.get("workspace", {}).get("package", {}) or cargo.get("package", {})).get(
        "repository"
    )
    if not repository:
        raise SystemExit("Cargo.toml: no repository URL to build runbook URLs from")
    return repository.rstrip("/") + "/blob/main/docs/operations.md#"


def slug(text):
    """GitHub's anchor for a heading's text (github-slugger's rules)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and _
    return text.replace(" ", "-")


def sections(markdown):
    """anchor -> (level, words in the section), in document order."""
    anchors, seen = {}, {}
    current, fence = None, None
    for line in markdown.splitlines():
        marker = re.match(r"\s{0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        heading = None if fence else re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchor = slug(heading.group(2))
            if anchor in seen:
                seen[anchor] += 1
                anchor = f"{anchor}-{seen[anchor]}"
            else:
                seen[anchor] = 0
            level = len(heading.group(1))
            anchors[anchor] = [level, 0]
            current = anchor
            continue
        if current is not None:
            anchors[current][1] += len(line.split())
    # A section's words include its subsections' (a runbook may be split).
    ordered = list(anchors.items())
    totals = {}
    for i, (anchor, (level, words)) in enumerate(ordered):
        total = words
        for _, (sub_level, sub_words) in ordered[i + 1 :]:
            if sub_level <= level:
                break
            total += sub_words
        totals[anchor] = (level, total)
    return totals


def problems_of(rules, markdown, base):
    found = sections(markdown)
    alerts = [r for g in rules.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    problems = []
    if not alerts:
        problems.append("no alerts found")
    for rule in alerts:
        name = rule["alert"]
        url = (rule.get("annotations") or {}).get("runbook_url")
        if not url:
            problems.append(f"{name}: no runbook_url annotation")
            continue
        if not url.startswith(base):
            problems.append(f"{name}: runbook_url {url} does not start with {base}")
            continue
        anchor = url[len(base) :]
        if anchor not in found:
            problems.append(f"{name}: runbook_url anchor #{anchor} is no heading of docs/operations.md")
        elif found[anchor][1] < MIN_WORDS:
            problems.append(
                f"{name}: section #{anchor} of docs/operations.md has {found[anchor][1]} words;"
                f" a runbook needs at least {MIN_WORDS} (what it means, what to do)"
            )
    return problems, len(alerts)


def self_test(rules, markdown, base):
    import copy

    def without_url(r):
        r = copy.deepcopy(r)
        del r["groups"][0]["rules"][0]["annotations"]["runbook_url"]
        return r

    def with_url(r, url):
        r = copy.deepcopy(r)
        r["groups"][0]["rules"][0]["annotations"]["runbook_url"] = url
        return r

    first = rules["groups"][0]["rules"][0]
    anchor = first["annotations"]["runbook_url"][len(base) :]
    heading = re.compile(r"^(#{1,6})\s+" + re.escape(first["alert"]) + r"\s*$", re.M | re.I)
    if not heading.search(markdown):
        raise SystemExit(f"self-test: no heading named {first['alert']} to break")
    breaks = {
        "an alert without runbook_url": (without_url(rules), markdown),
        "a runbook_url to an anchor that does not exist": (
            with_url(rules, base + anchor + "-typo"),
            markdown,
        ),
        "a runbook_url elsewhere than docs/operations.md": (
            with_url(rules, "https://example.com/runbooks#" + anchor),
            markdown,
        ),
        "the alert's heading removed": (rules, heading.sub("", markdown, count=1)),
        "the alert's heading only inside a code block": (
            rules,
            heading.sub(lambda m: "```\n" + m.group(0) + "\n```", markdown, count=1),
        ),
        "the alert's section emptied": (
            rules,
            heading.sub(lambda m: m.group(0) + "\n\n" + m.group(1) + " Next", markdown, count=1),
        ),
    }
    return selftest.verdict(
        "runbooks",
        problems_of(rules, markdown, base)[0],
        {name: (lambda r=r, md=md: problems_of(r, md, base)[0]) for name, (r, md) in breaks.items()},
    )


def main(argv):
    testing = "--self-test" in argv
    argv = [a for a in argv if a != "--self-test"]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rules = yaml.safe_load(pathlib.Path(argv[0]).read_text())
    markdown = pathlib.Path(argv[1]).read_text()
    base = base_url()
    if testing:
        return self_test(rules, markdown, base)
    problems, count = problems_of(rules, markdown, base)
    for line in problems:
        print(f"{argv[0]}: {line}", file=sys.stderr)
    if not problems:
        print(f"runbooks: {count} alerts, each with a runbook section in {argv[1]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
