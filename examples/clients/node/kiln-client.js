#!/usr/bin/env node
// Submit one Kiln build request and wait for its outcome.
//
//   KILN_AMQP_URL=amqp://alice:secret@127.0.0.1:5672/%2f \
//   KILN_AMQP_PREFIX=kiln \
//   node kiln-client.js request.json
//
// Publishes the request in the file to the `<prefix>.requests` exchange as
// the AMQP user of the URL (RabbitMQ checks the `userId` property, and Kiln
// takes it as the tenant), then waits for the build's terminal event
// (`build.succeeded`, `build.failed`, `build.cancelled`, `build.rejected`) or
// a `request.rejected` answering this request. Prints the outcome; exits 0
// when the build succeeded, 1 when it did not, 2 when there was no answer in
// time (KILN_WAIT_TIMEOUT seconds, default 600) or the input was wrong.
//
// The CloudEvents SDK has no AMQP binding for JavaScript; an event's AMQP
// `content_type` plays the part of the HTTP `content-type` header, as in the
// RabbitMQ binding, so the SDK's HTTP parser reads it (structured mode).
// See ../README.md for the topology and docs/protocol.md for the contract.
'use strict';

const fs = require('node:fs');
const amqp = require('amqplib');
const { HTTP } = require('cloudevents');

const TERMINAL = new Set(['build.succeeded', 'build.failed', 'build.cancelled', 'build.rejected']);
// Binding keys that match the event routing keys with and without the tenant
// word (`build.succeeded` and `build.succeeded.<tenant>`): `#` matches zero or
// more words.
const BINDINGS = ['build.#', 'request.rejected.#'];

function fail(message, code = 2) {
  console.error(`kiln-client: ${message}`);
  process.exit(code);
}

// `build.succeeded` of `dev.kiln.build.succeeded.v1`.
function eventKind(type) {
  const parts = String(type).split('.');
  if (parts.length !== 5 || parts[0] !== 'dev' || parts[1] !== 'kiln') return null;
  return `${parts[2]}.${parts[3]}`;
}

function readRequest(path) {
  let body;
  let request;
  try {
    body = fs.readFileSync(path);
    request = JSON.parse(body);
  } catch (e) {
    fail(`cannot read the request ${path}: ${e.message}`);
  }
  const id = request && request.id;
  if (typeof id !== 'string' || id === '') {
    fail(`${path}: field \`id\` is missing or not a string; every request names its build id`);
  }
  return { body, buildId: id };
}

async function main() {
  if (process.argv.length !== 3) fail('usage: kiln-client.js REQUEST.json');
  const { body, buildId } = readRequest(process.argv[2]);
  const url = process.env.KILN_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const prefix = process.env.KILN_AMQP_PREFIX || 'kiln';
  const timeout = Number(process.env.KILN_WAIT_TIMEOUT || '600');
  // The publisher's tenant: the AMQP user unless KILN_TENANT names the
  // policy's tenant it maps to. Only used to tell our own `request.rejected`
  // from one answering another tenant's request for the same id.
  const user = decodeURIComponent(new URL(url).username || 'guest');
  const tenant = process.env.KILN_TENANT;

  let conn;
  try {
    conn = await amqp.connect(url);
  } catch (e) {
    fail(`cannot connect to the broker: ${e.message}`);
  }
  // A channel closed by the broker is reported on both; the rejected call
  // below says what failed.
  conn.on('error', () => {});
  let closing = false;
  conn.on('close', () => closing || fail('the connection to the broker closed before the outcome'));
  const ch = await conn.createConfirmChannel();
  ch.on('error', () => {});
  // Subscribe first: events published before the queue is bound are lost to
  // this subscriber. A server-named, exclusive queue goes away with the
  // connection.
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  try {
    for (const key of BINDINGS) await ch.bindQueue(queue, `${prefix}.events`, key);
  } catch (e) {
    // 404: the workers declare the exchanges; none has run with this prefix.
    fail(`cannot subscribe to ${prefix}.events (${e.message}): is a worker with prefix ${JSON.stringify(prefix)} running?`);
  }

  let outcome = null;
  const done = new Promise((resolve) => {
    outcome = resolve;
  });
  await ch.consume(
    queue,
    (msg) => {
      if (msg === null) return outcome(fail('the broker cancelled the subscription'));
      let event;
      try {
        event = HTTP.toEvent({
          headers: { 'content-type': msg.properties.contentType || '' },
          body: msg.content.toString('utf8'),
        });
      } catch (e) {
        console.error(`skipping an event that is not a CloudEvent (${e.message})`);
        return undefined;
      }
      const data = event.data || {};
      if (data.buildId !== buildId) return undefined;
      const kind = eventKind(event.type);
      console.log(`event ${kind} (${msg.fields.routingKey})`);
      if (kind === 'request.rejected') {
        if (tenant !== undefined && data.tenant !== undefined && data.tenant !== tenant) return undefined;
        console.log(`outcome: request.rejected ${data.reason}: ${data.message}`);
        return outcome(1);
      }
      if (TERMINAL.has(kind)) {
        console.log(`outcome: ${kind}`);
        for (const image of data.images || []) {
          console.log(`image ${image.name}: ${image.phase} ${image.digest || ''}`.trimEnd());
        }
        if (kind !== 'build.succeeded') console.log(`reason: ${data.reason}: ${data.message}`);
        return outcome(kind === 'build.succeeded' ? 0 : 1);
      }
      return undefined;
    },
    { noAck: true },
  );

  // Publish persistent, mandatory and confirmed: an unroutable request (no
  // worker has declared the queue) comes back as a `return`, and is an error,
  // not a silent loss.
  let returned = false;
  ch.on('return', () => {
    returned = true;
  });
  await new Promise((resolve, reject) => {
    ch.publish(`${prefix}.requests`, 'build', body, {
      contentType: 'application/json',
      persistent: true,
      mandatory: true,
      userId: user,
    }, (err) => (err ? reject(new Error('the broker refused the request (nack)')) : resolve()));
  });
  // A return arrives before the confirm of the same message.
  if (returned) {
    fail(`no queue is bound to ${prefix}.requests with key \`build\`: is a worker with prefix ${JSON.stringify(prefix)} running?`);
  }
  console.log(`submitted ${buildId} as ${user}`);

  const timer = setTimeout(() => fail(`no outcome for ${buildId} within ${timeout} s`), timeout * 1000);
  const code = await done;
  clearTimeout(timer);
  closing = true;
  await conn.close();
  return code;
}

main().then(
  (code) => process.exit(code),
  (e) => fail(e.message),
);
