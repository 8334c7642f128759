// Validates Kubernetes objects against the Kubernetes API schemas (and the Prometheus Operator's,
// for a PodMonitor), twice:
//  1. kubernetes-models' JSON-schema validators: every field has the right type and format;
//  2. TypeScript's excess-property check against the same package's types: no unknown field (a
//     typo such as `readinessprobe` passes the schemas but the API server refuses it).
// Usage: node validate.mjs OBJECTS.json   (a JSON array of objects, e.g. from kubectl kustomize)
// Prints one line per object and exits 1 if any object is invalid.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const label = (o) => `${o.apiVersion}/${o.kind} ${o.metadata?.name ?? "(no name)"}`;

// kubernetes-models lays out its classes as <group>/<version>/<Kind> (the core group is "v1"),
// and so does its package for the Prometheus Operator's custom resources (PodMonitor).
const packages = ["kubernetes-models", "@kubernetes-models/prometheus-operator"];
function modulePath(o) {
  const paths = packages.map((p) => `${p}/${o.apiVersion}/${o.kind}`);
  return paths.find((path) => existsSync(join(here, "node_modules", `${path}.js`))) ?? null;
}

let failed = false;
const typed = [];
for (const o of objects) {
  const path = modulePath(o);
  if (path === null) {
    console.log(`INVALID ${label(o)}: no Kubernetes schema for this apiVersion and kind`);
    failed = true;
    continue;
  }
  const Model = (await import(path))[o.kind];
  try {
    new Model(o).validate();
    typed.push({ o, path });
  } catch (e) {
    console.log(`INVALID ${label(o)}: ${e.message}`);
    failed = true;
  }
}

// One object per line, so that tsc's line numbers name the object.
const lines = typed.map(({ path, o }, i) => `import type { I${o.kind} as T${i} } from "${path}";`);
const first = lines.length;
typed.forEach(({ o }, i) => lines.push(`export const o${i}: T${i} = ${JSON.stringify(o)};`));
const check = join(here, "objects-check.ts");
writeFileSync(check, lines.join("\n") + "\n");
try {
  execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "--noEmit",
    "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext", check],
    { encoding: "utf8" });
} catch (e) {
  failed = true;
  for (const line of e.stdout.split("\n").filter((l) => l.includes("error TS"))) {
    const m = line.match(/\((\d+),\d+\): (.*)$/);
    const object = m ? typed[Number(m[1]) - 1 - first] : undefined;
    console.log(`INVALID ${object ? label(object.o) : "?"}: ${m ? m[2] : line}`);
  }
}
if (!failed) for (const { o } of typed) console.log(`valid ${label(o)}`);
process.exit(failed ? 1 : 0);
