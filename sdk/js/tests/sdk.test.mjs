// Unit tests of the JavaScript SDK under Node (`node --test sdk/js/tests`,
// which `cargo xtask test` runs): wmr.js is loaded from a copy whose WIT
// host import is a stub, and its exports are called with batches built here.

import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const sdk = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "wmr-js-sdk-"));
writeFileSync(join(dir, "host.mjs"), "export function addCounters() {}\nexport function log() {}\n");
copyFileSync(join(sdk, "alphabet.js"), join(dir, "alphabet.mjs"));
writeFileSync(
  join(dir, "wmr.mjs"),
  readFileSync(join(sdk, "wmr.js"), "utf8")
    .replace('"wmr:job/host@0.1.0"', '"./host.mjs"')
    .replace('"./alphabet.js"', '"./alphabet.mjs"'),
);
const { Job, words, exportJob } = await import(pathToFileURL(join(dir, "wmr.mjs")));
after(() => rmSync(dir, { recursive: true, force: true }));

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function textBatch(lines) {
  const bytes = lines.map((line) => encoder.encode(line));
  const offsets = new Int32Array(lines.length + 1);
  bytes.forEach((b, i) => (offsets[i + 1] = offsets[i] + b.length));
  const values = new Uint8Array(offsets[lines.length]);
  bytes.forEach((b, i) => values.set(b, offsets[i]));
  return {
    numRows: lines.length,
    names: ["offset", "line"],
    columns: [
      { validity: new Uint8Array(0), data: { tag: "int64", val: new BigInt64Array(lines.length) } },
      { validity: new Uint8Array(0), data: { tag: "utf8", val: { offsets, values } } },
    ],
  };
}

/** A (string, u64) pairs batch as sorted "key=value" strings. */
function pairs(batch) {
  const [keys, values] = batch.columns.map((c) => c.data.val);
  const out = [];
  for (let i = 0; i < batch.numRows; i++) {
    out.push(`${decoder.decode(keys.values.subarray(keys.offsets[i], keys.offsets[i + 1]))}=${values[i]}`);
  }
  return out.sort();
}

class WordCount extends Job {
  key = "string";
  value = "u64";
  output = [["word", "string"], ["count", "u64"]];
  longest = 0;
  map(record, emit) {
    emit.each(words(record.line), 1);
    emit("lines", 1);
  }
  combine(word, counts) {
    this.longest = Math.max(this.longest, counts.length);
    return counts.reduce((a, b) => a + b, 0);
  }
  reduce(word, counts, emit) {
    emit(word, this.combine(word, counts));
  }
}

test("words are runs of letters, as in Rust", () => {
  assert.deepEqual(words("It's a café, Ñandú!"), ["It", "s", "a", "café", "Ñandú"]);
  assert.deepEqual(words("--"), []);
});

test("emit.each counts like emit, held until flush", () => {
  const world = exportJob(WordCount);
  world.configure([]);
  assert.equal(world.map("a.txt", textBatch(["a b a", "b c"])).numRows, 0);
  world.map("a.txt", textBatch(["a lines"]));
  assert.deepEqual(pairs(world.flush()), ["a=3", "b=2", "c=1", "lines=4"]);
});

test("emit.each hands combine two values at a time, logarithmically often", () => {
  let job;
  let calls = 0;
  class Watched extends WordCount {
    constructor(params) {
      super(params);
      job = this;
    }
    combine(word, counts) {
      calls++;
      return super.combine(word, counts);
    }
  }
  const world = exportJob(Watched);
  world.configure([]);
  const n = 3 * 4096 + 5;
  world.map("a.txt", textBatch([Array(n).fill("w").join(" ")]));
  assert.deepEqual(pairs(world.flush()), ["lines=1", `w=${n}`]);
  assert.equal(job.longest, 2);
  // 13 doublings and 3 set bits of 12293 past the first.
  assert.ok(calls <= 2 * Math.ceil(Math.log2(n)), `${calls} combine calls`);
});
