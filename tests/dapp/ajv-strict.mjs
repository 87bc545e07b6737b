// Compiles every JSON Schema a catalog publishes with ajv 8 in strict mode (draft-04, as the
// schemas declare), as strict platform-side validators do.
//
//   node ajv-strict.mjs CATALOG.json
//
// Prints {"compiled": N, "errors": ["<plan> <path>: <message>", …]} on stdout.
import fs from "node:fs";
import Ajv from "ajv-draft-04";

const catalog = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = { compiled: 0, errors: [] };
for (const service of catalog.services ?? []) {
  for (const plan of service.plans ?? []) {
    const schemas = plan.schemas ?? {};
    for (const [path, schema] of [
      ["service_instance.create", schemas.service_instance?.create?.parameters],
      ["service_instance.update", schemas.service_instance?.update?.parameters],
      ["service_binding.create", schemas.service_binding?.create?.parameters],
    ]) {
      if (!schema) continue;
      try {
        new Ajv({ strict: true, allErrors: true }).compile(schema);
        out.compiled += 1;
      } catch (e) {
        out.errors.push(`${service.name}/${plan.name} ${path}: ${e.message}`);
      }
    }
  }
}
console.log(JSON.stringify(out));
