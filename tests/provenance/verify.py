#!/usr/bin/env python3
"""Verify the provenance of Kiln events with a verifier no one here wrote.

Reads a file of CloudEvents (JSON lines, as `kiln watch --output json`
writes them, or one JSON array) and checks every `image.succeeded` event's
`data.provenance` with securesystemslib (the DSSE and key code of the in-toto
and TUF projects): the envelope must verify against the public key, under the
key id `sha256:` + hex SHA-256 of the key's DER SubjectPublicKeyInfo computed
here; the statement must be an in-toto Statement v1 with SLSA Provenance v1;
every subject must carry the event's `data.digest`, the subjects must be the
event's destinations, and `invocationId` must be `<build>/<image>/<attempt>`.

    pip install -r tests/provenance/requirements.txt
    verify.py --key PUB.pem EVENTS            # every image.succeeded signed
    verify.py --expect-none EVENTS            # no event carries provenance

Exit code 0 when every check passes, 1 otherwise (each failure on stderr).
"""

import argparse
import hashlib
import json
import sys

from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

SUCCEEDED = "dev.kiln.image.succeeded.v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def load_key(path):
    with open(path, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keyid = "sha256:" + hashlib.sha256(der).hexdigest()
    return SSlibKey.from_crypto(public, keyid=keyid, scheme="ecdsa-sha2-nistp256")


def read_events(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check(event, key):
    """The problems of one image.succeeded event (empty when it verifies)."""
    data = event.get("data", {})
    envelope = data.get("provenance")
    if envelope is None:
        return ["no data.provenance"]
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        return [f"payloadType is {envelope.get('payloadType')!r}"]
    try:
        dsse = Envelope.from_dict(envelope)
        dsse.verify([key], 1)
    except Exception as e:  # noqa: BLE001 - any refusal is a failed check
        return [f"envelope does not verify: {type(e).__name__}: {e}"]
    statement = json.loads(dsse.payload)
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type is {statement.get('_type')!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(f"predicateType is {statement.get('predicateType')!r}")
    digest = data.get("digest", "")
    subjects = statement.get("subject", [])
    if not subjects:
        problems.append("no subject")
    for s in subjects:
        if "sha256:" + s.get("digest", {}).get("sha256", "") != digest:
            problems.append(f"subject {s.get('name')} digest {s.get('digest')} != event digest {digest}")
    names = sorted(s.get("name") for s in subjects)
    refs = sorted(ref.rsplit("@", 1)[0] for ref in data.get("imageRefs", []))
    if names != refs:
        problems.append(f"subjects {names} are not the event's destinations {refs}")
    invocation = statement.get("predicate", {}).get("runDetails", {}).get("metadata", {}).get("invocationId")
    expected = f"{data.get('buildId')}/{data.get('image')}/{data.get('attempt')}"
    if invocation != expected:
        problems.append(f"invocationId {invocation!r} != {expected!r}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="PEM public key of the worker")
    which.add_argument("--expect-none", action="store_true", help="no event may carry provenance")
    parser.add_argument("events", help="file of CloudEvents (JSON lines or a JSON array)")
    args = parser.parse_args()

    events = read_events(args.events)
    failures = 0
    if args.expect_none:
        for event in events:
            if "provenance" in event.get("data", {}):
                print(f"{event.get('id')}: carries provenance, none expected", file=sys.stderr)
                failures += 1
        print(f"{len(events)} events, {failures} with provenance")
        return 1 if failures else 0

    key = load_key(args.key)
    succeeded = [e for e in events if e.get("type") == SUCCEEDED]
    for event in succeeded:
        for problem in check(event, key):
            print(f"{event.get('id')}: {problem}", file=sys.stderr)
            failures += 1
    if not succeeded:
        print("no image.succeeded event to verify", file=sys.stderr)
        return 1
    print(f"{len(succeeded)} image.succeeded events, {failures} problems (key {key.keyid})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
