// Compile contracts/*.sol with the pinned solcjs in .tools/node_modules (standard JSON,
// optimizer on, evmVersion shanghai: ganache 7.9 has no Cancun opcodes). Imports of
// "@openzeppelin/..." are read from .tools/node_modules. Prints the standard JSON output
// (abi, bytecode) on stdout; exits 1 and prints the errors on stderr if compilation fails.
// Usage: node contracts/compile.js <.tools/node_modules>
"use strict";
const fs = require("fs");
const path = require("path");

const modules = path.resolve(process.argv[2]);
const solc = require(path.join(modules, "solc"));
const here = __dirname;
const sources = {};
for (const name of fs.readdirSync(here).filter((n) => n.endsWith(".sol")).sort()) {
  sources[name] = { content: fs.readFileSync(path.join(here, name), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "shanghai",
    viaIR: true,
    optimizer: { enabled: true, runs: 10000 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
function findImports(name) {
  const file = path.join(modules, name);
  if (!file.startsWith(modules + path.sep) || !fs.existsSync(file)) {
    return { error: `import not found: ${name}` };
  }
  return { contents: fs.readFileSync(file, "utf8") };
}
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length > 0) {
  for (const e of errors) process.stderr.write(e.formattedMessage + "\n");
  process.exit(1);
}
process.stdout.write(JSON.stringify(output.contracts));
