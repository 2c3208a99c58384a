#!/usr/bin/env node
// Validates Prometheus Operator objects (monitoring.coreos.com/v1
// PrometheusRule and PodMonitor) with the validate functions of the npm
// package @kubernetes-models/prometheus-operator, which compiles the
// operator's API schema into them. .ci/node/package-lock.json pins it;
// .ci/validate-manifests installs it into target/ci-node/ (npm ci).
//
// Protocol, for .ci/check_monitoring.py: one object as JSON per line on
// stdin, one line of JSON per object on stdout:
//   {"errors": [{"path": ["spec", "groups", "0"], "message": "..."}, ...]}
// (empty when the object is valid). One process serves every object a run
// checks, the self-test's broken copies included, so Node starts once.
//
// Strictness. The package's schemas have no `additionalProperties: false`:
// its validate functions let a misspelt field (`annotation:` for
// `annotations:`) through, which the API server then prunes or, with field
// validation, rejects. So the object is handed to the validate function
// behind a Proxy that records which fields the function reads: a compiled
// schema reads every property it declares (`data.expr`, `data.for`, ...) and
// every key of a map it declares (labels, annotations), and never a field it
// does not know. A field of an object the function entered that it never
// read is one the schema does not have, and fails here. If a later version
// of the package stopped reading fields it knows, valid objects would fail
// (loudly); the self-test's misspelt fields catch the opposite.

import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const models = path.join(
  root,
  "target/ci-node/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
);
const API_VERSION = "monitoring.coreos.com/v1";
const KINDS = ["PrometheusRule", "PodMonitor"];

// The package's export map sends ./monitoring.coreos.com/v1/<Kind> to this
// file; imported by path because the package lives under target/, where
// Node's resolution from .ci/ does not look.
const classes = {};
for (const kind of KINDS) {
  const file = path.join(models, `${kind}.js`);
  try {
    classes[kind] = (await import(pathToFileURL(file)))[kind];
  } catch (error) {
    console.error(
      `validate_crds: cannot load ${file} (${error.code ?? error.message}); ` +
        "run .ci/validate-manifests, which installs .ci/node/package-lock.json into target/ci-node/",
    );
    process.exit(2);
  }
}

// `value` behind Proxies that record, per object, the fields read.
function tracked(value) {
  const objects = [];
  const proxies = new WeakMap();
  function wrap(v, where) {
    if (v === null || typeof v !== "object") return v;
    if (!proxies.has(v)) {
      const read = new Set();
      proxies.set(
        v,
        new Proxy(v, {
          get(target, key, receiver) {
            const child = Reflect.get(target, key, receiver);
            if (typeof key !== "string" || !Object.hasOwn(target, key)) return child;
            read.add(key);
            return wrap(child, [...where, key]);
          },
        }),
      );
      if (!Array.isArray(v)) objects.push({ where, value: v, read });
    }
    return proxies.get(v);
  }
  return { proxy: wrap(value, []), objects };
}

function problems(doc) {
  const kind = doc?.kind;
  if (!Object.hasOwn(classes, kind)) {
    return [{ path: ["kind"], message: `${JSON.stringify(kind)} is none of ${KINDS.join(", ")}` }];
  }
  if (doc.apiVersion !== API_VERSION) {
    return [{ path: ["apiVersion"], message: `${JSON.stringify(doc.apiVersion)} is not ${API_VERSION}` }];
  }
  const { proxy, objects } = tracked(doc);
  const errors = [];
  try {
    // The model's own validate(), run on the object itself: `new Kind(doc)`
    // would copy every field, reading them all, and blind the tracking.
    classes[kind].prototype.validate.call(proxy);
  } catch (error) {
    if (!Array.isArray(error.errors)) throw error;
    for (const e of error.errors) {
      const where = e.instancePath
        .split("/")
        .slice(1)
        .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"));
      errors.push({ path: where, message: e.message });
    }
  }
  for (const { where, value, read } of objects) {
    for (const key of Object.keys(value)) {
      if (!read.has(key)) {
        errors.push({
          path: [...where, key],
          message: `unknown field: the ${kind} schema (@kubernetes-models/prometheus-operator) has no ${JSON.stringify(key)} here`,
        });
      }
    }
  }
  return errors;
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  process.stdout.write(JSON.stringify({ errors: problems(JSON.parse(line)) }) + "\n");
}
