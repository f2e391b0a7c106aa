// Validates prometheus-operator custom resources against the CRD schemas that
// @kubernetes-models/prometheus-operator ships (generated from prometheus-operator's own
// CRDs; compiled JSON-schema validators, ajv). Used by tests/deploy.rs.
//
//   node validate-crds.mjs MANIFESTS.json     # a JSON array of Kubernetes objects
//
// Exit 0: every object is a ServiceMonitor or PrometheusRule and valid. Exit 1: an object
// is invalid, or of a kind this script does not know (never skipped silently).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

const require = createRequire(import.meta.url);
const pkg = require("@kubernetes-models/prometheus-operator/package.json");
console.log(`schemas: ${pkg.name}@${pkg.version}`);

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const obj of objects) {
  const id = `${obj.apiVersion}/${obj.kind}`;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = models[id];
  if (!Model) {
    console.log(`FAIL ${name}: no schema for ${id}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok   ${name}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    failed++;
  }
}
if (objects.length === 0) {
  console.log("FAIL no objects given");
  failed++;
}
process.exit(failed === 0 ? 0 : 1);
