// The reference: @openzeppelin/merkle-tree's StandardMerkleTree for ["address", "uint256"].
// Reads [[address, "amount"], ...] as JSON on stdin; prints {dump, root, proofs} where
// proofs[i] is getProof(i). Usage: node tests/rewards/oz_tree.js <.tools/node_modules>
"use strict";
const path = require("path");
const { StandardMerkleTree } = require(path.join(path.resolve(process.argv[2]),
  "@openzeppelin/merkle-tree"));

let input = "";
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const values = JSON.parse(input);
  const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
  const proofs = values.map((_, i) => tree.getProof(i));
  process.stdout.write(JSON.stringify({ dump: tree.dump(), root: tree.root, proofs }));
});
