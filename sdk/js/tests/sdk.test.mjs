// Unit tests of the JavaScript SDK under Node (`node --test
// sdk/js/tests/sdk.test.mjs`,
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
writeFileSync(
  join(dir, "host.mjs"),
  [
    "export function addCounters() {}",
    "export function log() {}",
    // The host's count-words, stubbed: the same words (checked against
    // words() below), counted, and every text it was given kept.
    "export const countedTexts = [];",
    "export function countWords(text) {",
    "  countedTexts.push(text);",
    "  const counts = new Map();",
    "  for (const w of text.match(/\\p{Alphabetic}+/gu) ?? []) counts.set(w, (counts.get(w) ?? 0) + 1);",
    "  return { words: [...counts.keys()].map((w) => w + \"\\n\").join(\"\"), counts: Uint32Array.from(counts.values()) };",
    "}",
  ].join("\n"),
);
copyFileSync(join(sdk, "alphabet.js"), join(dir, "alphabet.mjs"));
writeFileSync(
  join(dir, "wmr.mjs"),
  readFileSync(join(sdk, "wmr.js"), "utf8")
    .replace('"wmr:job/host@0.3.0"', '"./host.mjs"')
    .replace('"./alphabet.js"', '"./alphabet.mjs"'),
);
const { Job, words, exportJob } = await import(pathToFileURL(join(dir, "wmr.mjs")));
const { countedTexts } = await import(pathToFileURL(join(dir, "host.mjs")));
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

test("64-bit integers: Numbers where exact, BigInts beyond, both ways", () => {
  const seen = [];
  class Ints extends Job {
    key = "i64";
    value = "u64";
    output = [["k", "i64"], ["v", "u64"]];
    reduce(key, values, emit) {
      seen.push([key, values[0]]);
      emit(key, values[0]);
    }
  }
  const world = exportJob(Ints);
  world.configure([]);
  const keys = BigInt64Array.from([-(2n ** 63n), -(2n ** 53n), -(2n ** 53n) + 1n, -1n, 0n, 2n ** 32n + 5n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n - 1n]);
  const values = BigUint64Array.from([0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 52n + 3n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n]);
  const n = keys.length;
  const column = (tag, val) => ({ numRows: n, names: ["c"], columns: [{ validity: new Uint8Array(0), data: { tag, val } }] });
  const out = world.reduce({
    keys: column("int64", keys),
    values: column("uint64", values),
    groupEnds: Uint32Array.from({ length: n }, (_, i) => i + 1),
  });
  assert.deepEqual([...out.columns[0].data.val], [...keys]);
  assert.deepEqual([...out.columns[1].data.val], [...values]);
  const kinds = seen.map(([k, v]) => `${typeof k}/${typeof v}`);
  assert.deepEqual(kinds, [
    "bigint/number",
    "bigint/number",
    "number/number",
    "number/number",
    "number/number",
    "number/number",
    "number/bigint",
    "bigint/bigint",
    "bigint/bigint",
  ]);
  assert.equal(seen[2][0], -(2 ** 53) + 1);
  assert.equal(seen[5][0], 2 ** 32 + 5);
  assert.equal(seen[4][1], 2 ** 52 + 3);
});

test("a value out of a 64-bit column's range names itself", () => {
  class Bad extends Job {
    key = "string";
    value = "u64";
    output = [["k", "string"], ["v", "u64"]];
    map(record, emit) {
      emit(record.line, -1);
    }
  }
  const world = exportJob(Bad);
  world.configure([]);
  assert.throws(() => world.map("a.txt", textBatch(["x"])), (e) => /-1 is out of range for a 64-bit unsigned integer/.test(e.message));
});

test("emit.each hands combine values of their own, which it may change", () => {
  class Pairs extends Job {
    key = "string";
    value = ["i64", "i64"];
    output = [["k", "string"], ["a", "i64"], ["b", "i64"]];
    map(record, emit) {
      emit.each(words(record.line), [1, 1]);
    }
    combine(key, values) {
      const into = values[0];
      for (let i = 1; i < values.length; i++) {
        into[0] += values[i][0];
        into[1] += values[i][1];
      }
      return into;
    }
  }
  const world = exportJob(Pairs);
  world.configure([]);
  world.map("a.txt", textBatch(["a a a", "b", "c c c c c c c"]));
  const out = world.flush();
  const [keys, a, b] = out.columns.map((c) => c.data.val);
  const rows = [];
  for (let i = 0; i < out.numRows; i++) {
    rows.push(`${decoder.decode(keys.values.subarray(keys.offsets[i], keys.offsets[i + 1]))}=${a[i]}|${b[i]}`);
  }
  assert.deepEqual(rows.sort(), ["a=3|3", "b=1|1", "c=7|7"]);
});

test("emit.each once grouping stopped, and -0 kept apart from 0", () => {
  const world = exportJob(WordCount);
  world.configure([]);
  const lines = Array.from({ length: 100001 }, (_, i) => String(i).padStart(6, "0").replace(/[0-9]/g, (d) => "abcdefghij"[d]));
  // Every word once, and "lines" (its 100001 counts combined).
  assert.equal(world.map("a.txt", textBatch(lines)).numRows, lines.length + 1);
  assert.deepEqual(pairs(world.map("a.txt", textBatch(["x y x"]))), ["lines=1", "x=1", "x=1", "y=1"]);

  class Floats extends Job {
    key = "string";
    value = "f64";
    output = [["k", "string"], ["v", "f64"]];
    map(record, emit) {
      emit.each([record.line], record.line === "neg" ? -0 : 0);
    }
    combine(key, values) {
      return values[0];
    }
  }
  const floats = exportJob(Floats);
  floats.configure([]);
  floats.map("a.txt", textBatch(["neg", "pos"]));
  const out = floats.flush();
  const signs = Array.from(out.columns[1].data.val, (v) => (Object.is(v, -0) ? "-0" : String(v)));
  assert.deepEqual(signs.sort(), ["-0", "0"]);
});

test("dictionary columns: sent once, then named by id", () => {
  class Count extends Job {
    key = "string";
    value = "u64";
    output = [["k", "string"], ["n", "u64"]];
    map(record, emit) {
      emit(record.get("k") ?? "(null)", 1);
    }
    reduce(key, values, emit) {
      emit(key, values.length);
    }
  }
  function coded(dictionary, strings, codes, validity = new Uint8Array(0)) {
    let values;
    if (strings !== undefined) {
      const bytes = strings.map((s) => encoder.encode(s));
      const offsets = new Int32Array(strings.length + 1);
      bytes.forEach((b, i) => (offsets[i + 1] = offsets[i] + b.length));
      const all = new Uint8Array(offsets[strings.length]);
      bytes.forEach((b, i) => all.set(b, offsets[i]));
      values = { offsets, values: all };
    }
    return {
      numRows: codes.length,
      names: ["n", "k"],
      columns: [
        { validity: new Uint8Array(0), data: { tag: "int64", val: new BigInt64Array(codes.length) } },
        { validity, data: { tag: "utf8-dictionary", val: { dictionary, values, codes: Uint32Array.from(codes) } } },
      ],
    };
  }
  const world = exportJob(Count);
  world.configure([]);
  const first = world.map("t.parquet", coded(7n, ["a", "é"], [0, 1, 1, 0], Uint8Array.of(0b1011)));
  assert.deepEqual(pairs(first), ["(null)=1", "a=1", "a=1", "é=1"]);
  // Named again without its values: the one kept is used.
  assert.deepEqual(pairs(world.map("t.parquet", coded(7n, undefined, [1]))), ["é=1"]);
  // Values sent again under its id are appended to it.
  assert.deepEqual(pairs(world.map("t.parquet", coded(7n, ["z"], [2, 0]))), ["a=1", "z=1"]);
  assert.throws(() => world.map("t.parquet", coded(8n, undefined, [0])), (e) => /without sending it/.test(e.message));
});

test("emit.words counts like emit.each, in one host call per value", () => {
  class Words extends WordCount {
    map(record, emit) {
      emit.words(record.line);
      emit.words(record.line, 10);
    }
  }
  const world = exportJob(Words);
  world.configure([]);
  countedTexts.length = 0;
  world.map("a.txt", textBatch(["a b a", "b, c!"]));
  world.map("a.txt", textBatch(["a"]));
  // Held across calls, then counted in one call per distinct value.
  assert.deepEqual(countedTexts, []);
  assert.deepEqual(pairs(world.flush()), ["a=33", "b=22", "c=11"]);
  assert.deepEqual(countedTexts, ["a b a\nb, c!\na", "a b a\nb, c!\na"]);
  class NotText extends WordCount {
    map(record, emit) {
      emit.words(7, 1);
    }
  }
  const bad = exportJob(NotText);
  bad.configure([]);
  assert.throws(() => bad.map("a.txt", textBatch(["x"])), (e) => /emit.words takes a string, not number/.test(e.message));
  // Without a combine, every occurrence is emitted.
  class NoCombine extends Job {
    key = "string";
    value = "u64";
    output = [["word", "string"], ["count", "u64"]];
    map(record, emit) {
      emit.words(record.line, 2);
    }
    reduce(word, counts, emit) {
      emit(word, counts.length);
    }
  }
  const direct = exportJob(NoCombine);
  direct.configure([]);
  assert.deepEqual(pairs(direct.map("a.txt", textBatch(["a b a"]))), ["a=2", "a=2", "b=2"]);
});

test("a text longer than what waits for count-words goes in pieces cut between words", () => {
  class Words extends WordCount {
    map(record, emit) {
      emit.words(record.line);
    }
  }
  const world = exportJob(Words);
  world.configure([]);
  countedTexts.length = 0;
  // Some 400,000 units: pieces of at most 256 Ki, each cut at a space.
  const long = "alpha beta\ngamma ".repeat(24000) + "omega";
  world.map("a.txt", textBatch([long]));
  assert.deepEqual(pairs(world.flush()), ["alpha=24000", "beta=24000", "gamma=24000", "omega=1"]);
  assert.ok(countedTexts.length >= 2, `${countedTexts.length} calls`);
  assert.ok(countedTexts.every((t) => t.length < 256 << 10));
  // A text with no space or line end to cut at is split in JavaScript.
  countedTexts.length = 0;
  world.map("a.txt", textBatch(["x".repeat(300000)]));
  assert.deepEqual(pairs(world.flush()), [`${"x".repeat(300000)}=1`]);
  assert.deepEqual(countedTexts, []);
});
