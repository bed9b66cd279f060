// Parses assets/asyncapi.json with @asyncapi/parser (which validates it against the AsyncAPI
// 3.0.0 schema, resolves every $ref and runs its Spectral rules, examples against payloads
// included) and fails on any diagnostic of severity error. Warnings are printed, not fatal.
//   node validate.mjs [path]    (default: ../../assets/asyncapi.json)
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const here = path.dirname(fileURLToPath(import.meta.url));
const file = path.resolve(process.argv[2] || path.join(here, "..", "..", "assets", "asyncapi.json"));
const text = readFileSync(file, "utf8");

const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: file });

const names = { [DiagnosticSeverity.Error]: "error", [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info", [DiagnosticSeverity.Hint]: "hint" };
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  console.log(`${names[d.severity] || d.severity}: ${d.code}: ${where}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (!document || errors.length) {
  console.log(`${path.relative(process.cwd(), file)}: ${errors.length} error(s); not a valid AsyncAPI document`);
  console.log(`0 passed, 1 failed`);
  process.exit(1);
}
const messages = document.allMessages().length;
const operations = document.operations().length;
console.log(`${path.relative(process.cwd(), file)}: AsyncAPI ${document.version()}, ${document.channels().length} channel(s), ` +
  `${messages} messages, ${operations} operations, ${diagnostics.length - errors.length} warning(s)/hint(s)`);
console.log(`1 passed, 0 failed`);
