#!/usr/bin/env python3
"""Submit one Kiln build request and wait for its outcome.

    KILN_AMQP_URL=amqp://alice:secret@127.0.0.1:5672/%2f \
    KILN_AMQP_PREFIX=kiln \
    python3 kiln_client.py request.json

Publishes the request in the file to the `<prefix>.requests` exchange as
the AMQP user of the URL (RabbitMQ checks the `user_id` property, and Kiln
takes it as the tenant), then waits for the build's terminal event
(`build.succeeded`, `build.failed`, `build.cancelled`, `build.rejected`) or a
`request.rejected` answering this request. Prints the outcome; exits 0 when
the build succeeded, 1 when it did not, 2 when there was no answer in time
(KILN_WAIT_TIMEOUT seconds, default 600) or the input was wrong.

Events are parsed with the CloudEvents SDK's RabbitMQ binding. See
../README.md for the topology and docs/protocol.md for the contract.
"""

import json
import os
import sys
import time
import urllib.parse

import pika
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_structured_event

TERMINAL = {"build.succeeded", "build.failed", "build.cancelled", "build.rejected"}
# Binding keys that match the event routing keys with and without the tenant
# word (`build.succeeded` and `build.succeeded.<tenant>`): `#` matches zero
# or more words.
BINDINGS = ("build.#", "request.rejected.#")


def fail(message, code=2):
    print(f"kiln-client: {message}", file=sys.stderr)
    sys.exit(code)


def event_kind(event_type):
    """`build.succeeded` of `dev.kiln.build.succeeded.v1`."""
    parts = event_type.split(".")
    if len(parts) != 5 or parts[:2] != ["dev", "kiln"]:
        return None
    return f"{parts[2]}.{parts[3]}"


def read_request(path):
    try:
        with open(path, "rb") as f:
            body = f.read()
        request = json.loads(body)
    except (OSError, ValueError) as e:
        fail(f"cannot read the request {path}: {e}")
    build_id = request.get("id") if isinstance(request, dict) else None
    if not isinstance(build_id, str) or not build_id:
        fail(f"{path}: field `id` is missing or not a string; every request names its build id")
    return body, build_id


def main():
    if len(sys.argv) != 2:
        fail("usage: kiln_client.py REQUEST.json")
    body, build_id = read_request(sys.argv[1])
    url = os.environ.get("KILN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("KILN_AMQP_PREFIX", "kiln")
    timeout = float(os.environ.get("KILN_WAIT_TIMEOUT", "600"))
    # The publisher's tenant: the AMQP user unless KILN_TENANT names the
    # policy's tenant it maps to. Only used to tell our own
    # `request.rejected` from one answering another tenant's request for
    # the same id.
    user = urllib.parse.unquote(urllib.parse.urlparse(url).username or "guest")
    tenant = os.environ.get("KILN_TENANT")

    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as e:
        fail(f"cannot connect to the broker: {e!r}")
    ch = conn.channel()
    # Subscribe first: events published before the queue is bound are lost
    # to this subscriber. A server-named, exclusive queue goes away with the
    # connection.
    queue = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    try:
        for key in BINDINGS:
            ch.queue_bind(queue=queue, exchange=f"{prefix}.events", routing_key=key)
    except pika.exceptions.ChannelClosedByBroker as e:
        # 404: the workers declare the exchanges; none has run with this prefix.
        fail(f"cannot subscribe to {prefix}.events ({e.reply_text}): is a worker with prefix {prefix!r} running?")

    # Publish persistent, mandatory and confirmed: an unroutable request (no
    # worker has declared the queue) is an error, not a silent loss.
    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        user_id=user,
    )
    try:
        ch.basic_publish(f"{prefix}.requests", "build", body, props, mandatory=True)
    except pika.exceptions.UnroutableError:
        fail(f"no queue is bound to {prefix}.requests with key `build`: is a worker with prefix {prefix!r} running?")
    except pika.exceptions.NackError:
        fail("the broker refused the request (nack)")
    print(f"submitted {build_id} as {user}", flush=True)

    deadline = time.monotonic() + timeout
    for method, properties, payload in ch.consume(queue, auto_ack=True, inactivity_timeout=1):
        if time.monotonic() > deadline:
            fail(f"no outcome for {build_id} within {timeout:g} s")
        if method is None:
            continue
        headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (properties.headers or {}).items()}
        message = RabbitMQMessage(headers=headers, content_type=properties.content_type, body=payload)
        try:
            event = from_structured_event(message)
        except Exception as e:  # a foreign message on the exchange: skip it
            print(f"skipping an event that is not a CloudEvent ({e})", file=sys.stderr)
            continue
        data = event.get_data() or {}
        if data.get("buildId") != build_id:
            continue
        kind = event_kind(event.get_type())
        print(f"event {kind} ({method.routing_key})", flush=True)
        if kind == "request.rejected":
            if tenant is not None and data.get("tenant") not in (None, tenant):
                continue  # another tenant's request for the same id
            print(f"outcome: request.rejected {data.get('reason')}: {data.get('message')}")
            return 1
        if kind in TERMINAL:
            print(f"outcome: {kind}")
            for image in data.get("images") or []:
                print(f"image {image.get('name')}: {image.get('phase')} {image.get('digest') or ''}".rstrip())
            if kind != "build.succeeded":
                print(f"reason: {data.get('reason')}: {data.get('message')}")
            return 0 if kind == "build.succeeded" else 1
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except pika.exceptions.AMQPError as e:
        fail(f"the connection to the broker failed before the outcome: {e!r}")
