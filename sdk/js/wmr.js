// wmr: write wmr MapReduce jobs in JavaScript.
//
// A job is a class with `map`, an optional `combine` and `reduce`, exported
// as the module's default export:
//
//     import { Job } from "./wmr.js";
//
//     export default class WordCount extends Job {
//       key = "string";
//       value = "u64";
//       output = [["word", "string"], ["count", "u64"]];
//       map(record, emit) { emit.words(record.line, 1); }
//       combine(word, counts) { return counts.reduce((a, b) => a + b, 0); }
//       reduce(word, counts, emit) { emit(word, this.combine(word, counts)); }
//     }
//
// `wmr build` compiles it (with componentize-js) into one component that
// `wmr run` executes in a sandbox; it provides this file as `./wmr.js`.
// Every call from the engine is one batch of thousands of records in
// Arrow's columnar layout: this module turns a batch into JavaScript values
// once per batch, and emitted pairs back into columns once per batch.
//
// Types of keys, values and output columns: "string", "bytes" (Uint8Array),
// "i64", "u64" (Numbers, exact up to 2^53; BigInts are accepted too), "f64",
// "bool", or an array of them for a tuple; any value may be null.

import { addCounters, countWords, log as hostLog } from "wmr:job/host@0.3.0";
import { ALPHABETIC } from "./alphabet.js";

const TYPES = new Map([
  ["string", "utf8"],
  ["bytes", "binary"],
  ["i64", "int64"],
  ["u64", "uint64"],
  ["f64", "float64"],
  ["bool", "boolean"],
]);

// Combining in the mapper, checked after every call: the held values are
// folded (one `combine` call per held key) once FOLD_VALUES have come since
// the last fold, and sent on once more than HELD_KEYS distinct keys are
// held. Both are small for what a mapper could hold: componentize-js's
// engine caps SpiderMonkey's collected heap at 32 MiB, and its collector
// starts a collection only once the heap has grown past a multiple of what
// was live at the last one. With 100,000 words held, that mark lay past
// the cap, every collection was a last-ditch one (SpiderMonkey allows one
// a minute), and a word count aborted some 20 MB into its text; with
// 30,000, a 96 MiB split ran through.
const FOLD_VALUES = 100000;
const HELD_KEYS = 30000;
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const I64_MIN = -(2n ** 63n);
const I64_END = 2n ** 63n;
const U64_END = 2n ** 64n;
const TWO_32 = 4294967296;
// 64-bit integers whose high 32-bit half is within this are safe Numbers.
const SAFE_HIGH = 2097152;

const WORD = new RegExp(ALPHABETIC + "+", "gu");
const ASCII_WORD = /[A-Za-z]+/g;
const NOT_ASCII = /[^\x00-\x7f]/;

/**
 * The words of `text`: maximal runs of letters (Unicode's Alphabetic
 * property, exactly as the Rust SDK's `words` sees it), case kept as is.
 * `words("It's a café")` is `["It", "s", "a", "café"]`.
 */
export function words(text) {
  return text.match(NOT_ASCII.test(text) ? WORD : ASCII_WORD) ?? [];
}

const counters = new Map();

/** Add `delta` to the job counter `name`, summed over committed tasks. */
export function count(name, delta = 1) {
  if (!Number.isInteger(delta) && typeof delta !== "bigint") {
    throw new TypeError(`counter ${JSON.stringify(name)}: the delta must be an integer, not ${delta}`);
  }
  counters.set(name, (counters.get(name) ?? 0n) + BigInt(delta));
}

/** Write a line to this task's log: level "debug", "info", "warn" or "error". */
export function log(message, level = "info") {
  if (!["debug", "info", "warn", "error"].includes(level)) {
    throw new TypeError(`log level ${JSON.stringify(level)} is not one of debug, info, warn, error`);
  }
  hostLog(level, String(message));
}

function flushCounters() {
  if (counters.size === 0) return;
  const deltas = [];
  for (const [name, delta] of counters) if (delta !== 0n) deltas.push([name, delta]);
  counters.clear();
  if (deltas.length) addCounters(deltas);
}

/** The job's `--param name=value` pairs. */
export class Params extends Map {
  /** The value of parameter `name`; a missing one rejects the job at submit. */
  require(name) {
    if (!this.has(name)) {
      throw new Error(`missing job parameter ${JSON.stringify(name)}; give it with --param ${name}=VALUE`);
    }
    return this.get(name);
  }
}

/**
 * A MapReduce job. Subclass it, declare `key`, `value` and `output` (as
 * fields, or in the constructor), and define `map` and `reduce`, and
 * `combine` to pre-aggregate map-side (associative and commutative, like a
 * sum: it may be called any number of times on any subset of a key's
 * values). `output` is a list of [name, type] pairs, or a type (or array
 * of types) named `key`, `value`, `value2`, ... Set `totalOrder = true`
 * for part files in global key order.
 */
export class Job {
  key = "string";
  value = "string";
  output = "string";
  totalOrder = false;

  /** Build the job from its parameters (a Params); throw to reject it. */
  constructor(params) {
    this.params = params;
  }

  /** Map one input record, calling `emit(key, value)` (or
   * `emit.each(keys, value)`, for every key of `keys`, or
   * `emit.words(text, value)`, for every word of `text` as `words` finds
   * them, counted by the host) any number of times. */
  map(record, emit) {
    throw new Error(`${this.constructor.name} does not define map`);
  }

  /** Combine some of one key's values (an array) into one value. */
  combine(key, values) {
    throw new Error(`${this.constructor.name} does not define combine`);
  }

  /** Reduce all values of one key (an array) to rows: `emit(column, ...)`. */
  reduce(key, values, emit) {
    throw new Error(`${this.constructor.name} does not define reduce`);
  }
}

/**
 * One input record, valid during the `map` call it is given to. Text input:
 * `line`, `file`, `offset`. Parquet input: `record.get("column")`.
 */
export class Record {
  constructor(file, columns) {
    this.file = file;
    this.line = undefined;
    this.offset = undefined;
    this._columns = columns;
    this._row = 0;
  }

  /** The value of column `name` in this row (null where null). */
  get(name) {
    return this._columns.column(name)[this._row];
  }

  /** The names of the input's columns. */
  columns() {
    return this._columns.names;
  }
}

// --- columns ------------------------------------------------------------

function dataTypes(declared, what) {
  const items = Array.isArray(declared) ? declared : [declared];
  if (items.length === 0) throw new TypeError(`${what} declares no types`);
  return items.map((t) => {
    const dataType = TYPES.get(t);
    if (dataType === undefined) {
      throw new TypeError(
        `${what} declares ${JSON.stringify(t)}; the types are ${[...TYPES.keys()].join(", ")}, or an array of them`,
      );
    }
    return dataType;
  });
}

function outputFields(declared, what) {
  if (Array.isArray(declared) && declared.length && Array.isArray(declared[0])) {
    const names = [];
    const types = [];
    for (const pair of declared) {
      if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string") {
        throw new TypeError(`${what} must be [name, type] pairs; ${JSON.stringify(pair)} is not one`);
      }
      if (Array.isArray(pair[1])) {
        throw new TypeError(`${what} column ${JSON.stringify(pair[0])} must have one type, not an array`);
      }
      names.push(pair[0]);
      types.push(...dataTypes(pair[1], `${what} column ${JSON.stringify(pair[0])}`));
    }
    return [names, types];
  }
  const types = dataTypes(declared, what);
  const n = types.length;
  const names = types.map((_, i) => (i === 0 && n > 1 ? "key" : i <= 1 ? "value" : `value${i}`));
  return [names, types];
}

// A leading U+FEFF is a value's own character, not a byte-order mark.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const encoder = new TextEncoder();

function isSet(bits, i) {
  return (bits[i >> 3] >> (i & 7)) & 1;
}

function readUtf8({ offsets, values: bytes }, n) {
  const text = decoder.decode(bytes);
  const values = new Array(n);
  if (text.length === bytes.length) {
    // All ASCII: byte offsets are character offsets.
    for (let i = 0; i < n; i++) values[i] = text.slice(offsets[i], offsets[i + 1]);
  } else {
    for (let i = 0; i < n; i++) values[i] = decoder.decode(bytes.subarray(offsets[i], offsets[i + 1]));
  }
  return values;
}

// The dictionaries of dictionary-encoded `map` input columns, by column
// index: the host sends each value of a dictionary once, in parts appended
// to it, and then names it by id.
const dictionaries = new Map();

/** Keep the dictionary values `batch` brings (every one, read or not: a
 * later batch may name them without sending them again). */
function receiveDictionaries(batch) {
  const cols = batch.columns;
  for (let i = 0; i < cols.length; i++) {
    const { tag, val } = cols[i].data;
    if (tag !== "utf8-dictionary") continue;
    const held = dictionaries.get(i);
    if (val.values != null) {
      if (held !== undefined && held.id === val.dictionary) {
        held.parts.push(val.values);
      } else {
        dictionaries.set(i, { id: val.dictionary, parts: [val.values], strings: [] });
      }
    } else if (held?.id !== val.dictionary) {
      throw new Error(
        `the host named dictionary ${val.dictionary} for input column ${i} without sending it; this is a bug in wmr`,
      );
    }
  }
}

/** The strings of the dictionary of input column `index`, each made once
 * and shared by every row that has it. */
function dictionaryStrings(index, id) {
  const held = dictionaries.get(index);
  if (held === undefined || held.id !== id) {
    throw new Error(`dictionary ${id} of input column ${index} was never received`);
  }
  for (const part of held.parts) {
    for (const s of readUtf8(part, part.offsets.length - 1)) held.strings.push(s);
  }
  held.parts.length = 0;
  return held.strings;
}

/** A column of `n` rows as an array (null for nulls); `index` is its place
 * in a `map` input batch, for dictionaries. */
function readColumn(column, n, index) {
  const { tag, val } = column.data;
  let values;
  if (tag === "utf8") {
    values = readUtf8(val, n);
  } else if (tag === "utf8-dictionary") {
    const strings = dictionaryStrings(index, val.dictionary);
    const codes = val.codes;
    values = new Array(n);
    for (let i = 0; i < n; i++) values[i] = strings[codes[i]];
  } else if (tag === "binary") {
    const { offsets, values: bytes } = val;
    values = new Array(n);
    for (let i = 0; i < n; i++) values[i] = bytes.slice(offsets[i], offsets[i + 1]);
  } else if (tag === "int64" || tag === "uint64") {
    // Numbers where they are exact, BigInts beyond 2^53.
    values = readInt64s(val, n, tag === "int64");
  } else if (tag === "float64") {
    values = Array.from(val.subarray(0, n));
  } else {
    values = new Array(n);
    for (let i = 0; i < n; i++) values[i] = isSet(val, i) === 1;
  }
  const validity = column.validity;
  if (validity.length) {
    for (let i = 0; i < n; i++) if (!isSet(validity, i)) values[i] = null;
  }
  return values;
}

function readBatch(batch) {
  return batch.columns.map((c) => readColumn(c, batch.numRows));
}

function rowsOf(columns) {
  if (columns.length === 1) return columns[0];
  const n = columns[0].length;
  const rows = new Array(n);
  for (let i = 0; i < n; i++) rows[i] = columns.map((c) => c[i]);
  return rows;
}

function packBits(flags) {
  const bits = new Uint8Array((flags.length + 7) >> 3);
  for (let i = 0; i < flags.length; i++) if (flags[i]) bits[i >> 3] |= 1 << (i & 7);
  return bits;
}

/** The first `n` of a BigInt64Array or BigUint64Array as Numbers where they
 * are exact, BigInts beyond 2^53, read by 32-bit halves: no BigInt is made
 * for a value that is not one (each costs an allocation without a JIT). */
function readInt64s(val, n, signed) {
  const halves = new Uint32Array(val.buffer, val.byteOffset, 2 * n);
  const values = new Array(n);
  for (let i = 0; i < n; i++) {
    const high = signed ? halves[2 * i + 1] | 0 : halves[2 * i + 1];
    if (high > -SAFE_HIGH && high < SAFE_HIGH) {
      values[i] = high * TWO_32 + halves[2 * i];
    } else {
      const v = val[i];
      values[i] = v >= MIN_SAFE && v <= MAX_SAFE ? Number(v) : v;
    }
  }
  return values;
}

/** `values` (Numbers or BigInts, null as 0) as a BigInt64Array or
 * BigUint64Array; safe integers are written by 32-bit halves, with no
 * BigInt made. */
function writeInt64s(values, signed, what) {
  const n = values.length;
  const out = signed ? new BigInt64Array(n) : new BigUint64Array(n);
  const halves = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (typeof v === "number" && Number.isSafeInteger(v) && (signed || v >= 0)) {
      const high = Math.floor(v / TWO_32);
      halves[2 * i] = v - high * TWO_32;
      // A negative half is stored modulo 2^32: two's complement.
      halves[2 * i + 1] = high;
    } else if (v !== null && v !== undefined) {
      out[i] = checkedBigInt(v, signed, what);
    }
  }
  return out;
}

function checkedBigInt(v, signed, what) {
  if (typeof v === "number" && !Number.isInteger(v)) {
    throw new TypeError(`${what}: ${v} is not an integer`);
  }
  if (typeof v !== "number" && typeof v !== "bigint") {
    throw new TypeError(`${what}: ${JSON.stringify(v)} is not an integer`);
  }
  const big = BigInt(v);
  if (signed ? big < I64_MIN || big >= I64_END : big < 0n || big >= U64_END) {
    throw new RangeError(`${what}: ${v} is out of range for a 64-bit ${signed ? "" : "unsigned "}integer`);
  }
  return big;
}

function writeColumn(dataType, values, what) {
  const n = values.length;
  let nulls = false;
  for (let i = 0; i < n; i++) {
    if (values[i] === null || values[i] === undefined) {
      nulls = true;
      break;
    }
  }
  const validity = nulls ? packBits(values.map((v) => v !== null && v !== undefined)) : new Uint8Array(0);
  let data;
  if (dataType === "utf8" || dataType === "binary") {
    const offsets = new Int32Array(n + 1);
    let bytes;
    if (dataType === "utf8") {
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (typeof v !== "string" && v !== null && v !== undefined) {
          throw new TypeError(`${what}: ${JSON.stringify(v)} is not a string`);
        }
      }
      const joined = nulls ? values.map((v) => v ?? "").join("") : values.join("");
      bytes = encoder.encode(joined);
      if (bytes.length === joined.length) {
        let at = 0;
        for (let i = 0; i < n; i++) {
          at += values[i]?.length ?? 0;
          offsets[i + 1] = at;
        }
      } else {
        const parts = values.map((v) => encoder.encode(v ?? ""));
        bytes = concatBytes(parts, offsets);
      }
    } else {
      const parts = values.map((v) => {
        if (v === null || v === undefined) return new Uint8Array(0);
        if (!(v instanceof Uint8Array)) throw new TypeError(`${what}: ${v} is not a Uint8Array`);
        return v;
      });
      bytes = concatBytes(parts, offsets);
    }
    data = { tag: dataType, val: { offsets, values: bytes } };
  } else if (dataType === "int64" || dataType === "uint64") {
    data = { tag: dataType, val: writeInt64s(values, dataType === "int64", what) };
  } else if (dataType === "float64") {
    data = {
      tag: dataType,
      val: Float64Array.from(values, (v) => {
        if (v === null || v === undefined) return 0;
        if (typeof v !== "number") throw new TypeError(`${what}: ${JSON.stringify(v)} is not a number`);
        return v;
      }),
    };
  } else {
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (typeof v !== "boolean" && v !== null && v !== undefined) {
        throw new TypeError(`${what}: ${JSON.stringify(v)} is not a boolean`);
      }
    }
    data = { tag: dataType, val: packBits(values) };
  }
  return { validity, data };
}

function concatBytes(parts, offsets) {
  let total = 0;
  for (let i = 0; i < parts.length; i++) {
    total += parts[i].length;
    offsets[i + 1] = total;
  }
  const bytes = new Uint8Array(total);
  for (let i = 0; i < parts.length; i++) bytes.set(parts[i], offsets[i]);
  return bytes;
}

function writeBatch(names, types, columns, what) {
  return {
    numRows: columns.length ? columns[0].length : 0,
    names,
    columns: columns.map((c, i) => writeColumn(types[i], c, `${what} column ${JSON.stringify(names[i])}`)),
  };
}

function split(values, width, what) {
  if (width === 1) return [values];
  const columns = Array.from({ length: width }, () => new Array(values.length));
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Array.isArray(v) || v.length !== width) {
      throw new TypeError(`${what}: ${JSON.stringify(v)} is not an array of ${width}`);
    }
    for (let c = 0; c < width; c++) columns[c][i] = v[c];
  }
  return columns;
}

// --- exports -------------------------------------------------------------

class LazyColumns {
  constructor(batch) {
    this.batch = batch;
    this.names = batch.names;
    this.decoded = new Map();
  }

  has(name) {
    return this.names.includes(name);
  }

  column(name) {
    let column = this.decoded.get(name);
    if (column === undefined) {
      const i = this.names.indexOf(name);
      if (i < 0) {
        throw new Error(`input has no column ${JSON.stringify(name)}; its columns are: ${this.names.join(", ")}`);
      }
      column = readColumn(this.batch.columns[i], this.batch.numRows, i);
      this.decoded.set(name, column);
    }
    return column;
  }
}

/** Count one more of `key` with `byValue`'s value (`emit.each` while
 * grouping), keeping the key itself where its id is not (bytes, tuples). */
function countKey(byValue, key) {
  const id = keyId(key);
  byValue.counts.set(id, (byValue.counts.get(id) ?? 0) + 1);
  if (id !== key && !byValue.keys.has(id)) byValue.keys.set(id, key);
}

/** A key's identity in a Map: strings and numbers as they are, others
 * spelled out, each part of a tuple prefixed by its type and length. */
function keyId(key) {
  if (typeof key !== "object" || key === null) return key;
  if (key instanceof Uint8Array) return "b:" + key.join(",");
  let id = "t:";
  for (const part of key) {
    const text = `${part === null ? "null" : typeof part}:${part instanceof Uint8Array ? part.join(",") : part}`;
    id += `${text.length}#${text}`;
  }
  return id;
}

/** Whether `value` may be a column value (not some other object). */
function isColumnValue(value) {
  return !(typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array));
}

/** What tells `emit.each`'s values apart: -0 apart from 0, which a Map
 * would take for one value. */
function valueIdOf(value) {
  return Object.is(value, -0) ? "-0" : keyId(value);
}

// `emit.words` sends its texts to the host to count before more than this
// many UTF-16 units (one more for each text's separator) would wait (at
// most 768 KiB of UTF-8; the host takes 16 MiB); when the held pairs are
// folded or taken; and at the end of a `map` call that does not group. The
// more text per call, the fewer words come back twice; but the words that
// come back are made all at once, with no chance for the collector to run
// in between, so a call's worth must fit in the heap beside what is held
// (see HELD_KEYS). At 1 Mi units, a text of some 200,000 distinct words
// aborted while words came back as a list of pairs (three objects a word);
// as one string and one array (a string a word) it ran through, and a
// quarter of that leaves room to spare. A longer text goes in pieces.
const PENDING_WORD_CHARS = 256 << 10;

class Task {
  constructor(job) {
    const what = job.constructor.name;
    this.job = job;
    this.keyTypes = dataTypes(job.key, `${what}.key`);
    this.valueTypes = dataTypes(job.value, `${what}.value`);
    [this.outputNames, this.outputTypes] = outputFields(job.output, `${what}.output`);
    this.combines = job.combine !== Job.prototype.combine;
    this.pairNames = [...this.keyTypes, ...this.valueTypes].map((_, i) => `c${i}`);
    this.grouping = this.combines;
    this.held = new Map();
    // How many values `emit` has added to `held` since the last fold
    // (counted as they come: adding up the held arrays after every call
    // would walk every held key).
    this.emitted = 0;
    // What `emit.each` sent while grouping: per distinct value, how many
    // times each key came with it.
    this.counted = new Map();
    this.keys = [];
    this.values = [];
    // What `emit.words` was given and the host has not counted yet: per
    // distinct value, the value and its texts.
    this.pendingWords = new Map();
    this.pendingChars = 0;
  }

  /** The `emit(key, value)` handed to `map`, with `emit.each(keys, value)`. */
  emitter() {
    let emit;
    if (this.grouping) {
      const held = this.held;
      const counted = this.counted;
      const task = this;
      emit = (key, value) => {
        const id = keyId(key);
        const entry = held.get(id);
        if (entry === undefined) held.set(id, { key, values: [value] });
        else entry.values.push(value);
        task.emitted++;
      };
      emit.each = (keys, value) => {
        if (!isColumnValue(value)) {
          // Not a column value: emitted one by one, refused as emit refuses it.
          for (const key of keys) emit(key, value);
          return;
        }
        const valueId = valueIdOf(value);
        let byValue = counted.get(valueId);
        if (byValue === undefined) counted.set(valueId, (byValue = { value, counts: new Map(), keys: new Map() }));
        // Counts are plain numbers (no object per key, which SpiderMonkey's
        // collector would have to trace); a key whose id is not itself
        // (bytes, tuples) is kept beside them.
        const counts = byValue.counts;
        if (!Array.isArray(keys)) {
          for (const key of keys) countKey(byValue, key);
          return;
        }
        // An indexed loop, and strings counted in place: without a JIT,
        // for-of and a call per key cost more than the counting.
        for (let i = 0; i < keys.length; i++) {
          const key = keys[i];
          if (typeof key === "string") counts.set(key, (counts.get(key) ?? 0) + 1);
          else countKey(byValue, key);
        }
      };
    } else {
      const keys = this.keys;
      const values = this.values;
      emit = (key, value) => {
        keys.push(key);
        values.push(value);
      };
      emit.each = (eachKey, value) => {
        for (const key of eachKey) {
          keys.push(key);
          values.push(value);
        }
      };
    }
    const pending = this.pendingWords;
    emit.words = (text, value = 1) => {
      if (typeof text !== "string") throw new TypeError(`emit.words takes a string, not ${text === null ? "null" : typeof text}`);
      if (!isColumnValue(value)) {
        emit.each(words(text), value);
        return;
      }
      const size = text.length + 1;
      if (size > PENDING_WORD_CHARS) {
        // A long text goes in pieces cut at spaces or line ends (never
        // inside a word); one with no such cut is split here.
        for (let start = 0; start < text.length; ) {
          let end = Math.min(start + PENDING_WORD_CHARS - 1, text.length);
          if (end < text.length) {
            const cut = Math.max(text.lastIndexOf(" ", end), text.lastIndexOf("\n", end));
            if (cut <= start) {
              emit.each(words(text.slice(start)), value);
              return;
            }
            end = cut;
          }
          emit.words(text.slice(start, end), value);
          start = end;
        }
        return;
      }
      if (this.pendingChars + size > PENDING_WORD_CHARS) this.countPendingWords();
      const valueId = valueIdOf(value);
      let waiting = pending.get(valueId);
      if (waiting === undefined) pending.set(valueId, (waiting = { value, texts: [] }));
      waiting.texts.push(text);
      this.pendingChars += size;
    };
    return emit;
  }

  /** Have the host count the words of the texts `emit.words` was given (at
   * native speed, one call per distinct value), and emit them: each
   * distinct word counted once while grouping, else every occurrence. */
  countPendingWords() {
    const pending = [...this.pendingWords.values()];
    this.pendingWords.clear();
    this.pendingChars = 0;
    for (const { value, texts } of pending) {
      const counted = countWords(texts.join("\n"));
      const found = counted.words.split("\n");
      const times = counted.counts;
      if (this.grouping) {
        const valueId = valueIdOf(value);
        let byValue = this.counted.get(valueId);
        if (byValue === undefined) {
          this.counted.set(valueId, (byValue = { value, counts: new Map(), keys: new Map() }));
        }
        const counts = byValue.counts;
        for (let i = 0; i < times.length; i++) {
          const word = found[i];
          counts.set(word, (counts.get(word) ?? 0) + times[i]);
        }
      } else {
        for (let i = 0; i < times.length; i++) {
          const word = found[i];
          const n = times[i];
          for (let j = 0; j < n; j++) {
            this.keys.push(word);
            this.values.push(value);
          }
        }
      }
    }
  }

  /** How many keys are held (a key held both ways counts twice). */
  heldKeys() {
    let n = this.held.size;
    for (const { counts } of this.counted.values()) n += counts.size;
    return n;
  }

  /** Move what `emit.each` counted into `held`, a key's copies of one value
   * combined into one; returns how many values there were. */
  takeCounted() {
    let total = 0;
    for (const { value, counts, keys } of this.counted.values()) {
      for (const [id, n] of counts) {
        const key = keys.size === 0 ? id : (keys.get(id) ?? id);
        total += n;
        const one = n === 1 ? copyValue(value) : combineCopies(this.job, key, value, n);
        const entry = this.held.get(id);
        if (entry === undefined) this.held.set(id, { key, values: [one] });
        else entry.values.push(one);
      }
    }
    this.counted = new Map();
    return total;
  }

  pairs(keys, values) {
    const what = `${this.job.constructor.name}.map emitted`;
    const keyColumns = split(keys, this.keyTypes.length, `${what} a key that`);
    const valueColumns = split(values, this.valueTypes.length, `${what} a value that`);
    return writeBatch(this.pairNames, [...this.keyTypes, ...this.valueTypes], [...keyColumns, ...valueColumns], what);
  }

  /** The one value's counts when all that is held was counted with one
   * value (a word count's `emit.words(text, 1)`), else undefined. */
  countedOnly() {
    if (this.held.size !== 0 || this.counted.size !== 1) return undefined;
    return this.counted.values().next().value;
  }

  fold() {
    this.countPendingWords();
    const only = this.countedOnly();
    if (only !== undefined) {
      // Each key's copies are combined already (they are counts): judged
      // as they are, with no object made per key.
      let total = 0;
      for (const n of only.counts.values()) total += n;
      if (2 * only.counts.size > total) this.grouping = false;
      this.emitted = 0;
      return !this.grouping || only.counts.size > HELD_KEYS;
    }
    let total = 0;
    for (const entry of this.held.values()) total += entry.values.length;
    total += this.takeCounted();
    for (const entry of this.held.values()) {
      if (entry.values.length > 1) entry.values = [this.job.combine(entry.key, entry.values)];
    }
    if (2 * this.held.size > total) this.grouping = false;
    this.emitted = 0;
    return !this.grouping || this.held.size > HELD_KEYS;
  }

  takeAll() {
    this.countPendingWords();
    const keys = [];
    const values = [];
    const only = this.countedOnly();
    if (only !== undefined) {
      // Straight from the counts to the columns: an object and an array a
      // key in between would double what the collected heap (32 MiB in
      // componentize-js) holds at once.
      const { value, counts, keys: keyOf } = only;
      for (const [id, n] of counts) {
        keys.push(keyOf.size === 0 ? id : (keyOf.get(id) ?? id));
        values.push(n === 1 ? copyValue(value) : combineCopies(this.job, keys[keys.length - 1], value, n));
      }
      this.counted = new Map();
    }
    this.takeCounted();
    for (const { key, values: held } of this.held.values()) {
      keys.push(key);
      values.push(held.length === 1 ? held[0] : this.job.combine(key, held));
    }
    // A fresh Map rather than clear(): refilling one cleared Map again and
    // again ended, after some 24 MB of text, in an allocation failure that
    // aborts SpiderMonkey (seen with componentize-js 0.23).
    this.held = new Map();
    this.emitted = 0;
    for (let i = 0; i < this.keys.length; i++) {
      keys.push(this.keys[i]);
      values.push(this.values[i]);
    }
    this.keys.length = 0;
    this.values.length = 0;
    return this.pairs(keys, values);
  }
}

/** `job.combine(key, n copies of value)`, as combines of two values each:
 * copies are doubled (v with v, that with itself, ...) and the doublings
 * that make up n combined, so a key counted a million times costs some
 * forty `combine` calls of two values, not a loop over a million. Any
 * bracketing gives the same result, since `combine` is associative and
 * commutative. */
function combineCopies(job, key, value, n) {
  let result;
  let have = false;
  let power = copyValue(value);
  for (let left = n; left > 0; left = Math.floor(left / 2)) {
    if (left % 2 === 1) {
      result = have ? job.combine(key, [result, copyValue(power)]) : copyValue(power);
      have = true;
    }
    if (left > 1) power = job.combine(key, [power, copyValue(power)]);
  }
  return result;
}

/** A copy of a value (an array or bytes; others are immutable), so that no
 * two values handed on are one object a `combine` could change in place. */
function copyValue(value) {
  if (Array.isArray(value)) return value.map(copyValue);
  if (value instanceof Uint8Array) return value.slice();
  return value;
}

function describe(error) {
  if (!(error instanceof Error)) return `uncaught ${String(error)}`;
  const where = String(error.stack ?? "")
    .split("\n")
    .find((line) => line.includes("@") && !line.includes("wmr.js"));
  const text = error.message ? `${error.name}: ${error.message}` : error.name;
  return where ? `${text} (at ${where.slice(where.indexOf("@") + 1).split("/").pop()})` : text;
}

function guarded(body, rowOf) {
  try {
    return body();
  } catch (e) {
    throw { message: describe(e), row: rowOf() };
  } finally {
    flushCounters();
  }
}

function groupsOf(grouped) {
  const out = [];
  let start = 0;
  for (const end of grouped.groupEnds) {
    out.push([start, end]);
    start = end;
  }
  return out;
}

/** The component's exports for the job class `JobClass`. */
export function exportJob(JobClass) {
  let task = null;
  const configured = () => {
    if (task === null) throw new Error("the job was called before configure");
    return task;
  };
  let row;
  const currentRow = () => row;
  return {
    configure(params) {
      try {
        const job = new JobClass(new Params(params));
        task = new Task(job);
        return {
          name: String(job.name ?? JobClass.name),
          keyTypes: task.keyTypes,
          valueTypes: task.valueTypes,
          output: task.outputNames.map((name, i) => ({ name, dataType: task.outputTypes[i], nullable: true })),
          combines: task.combines,
          totalOrder: Boolean(job.totalOrder),
        };
      } catch (e) {
        throw describe(e);
      } finally {
        flushCounters();
      }
    },

    map(source, input) {
      row = undefined;
      return guarded(() => {
        const t = configured();
        const n = input.numRows;
        receiveDictionaries(input);
        const columns = new LazyColumns(input);
        const record = new Record(source, columns);
        const emit = t.emitter();
        const job = t.job;
        if (columns.has("line") && columns.has("offset")) {
          const lines = columns.column("line");
          const offsets = columns.column("offset");
          for (row = 0; row < n; row++) {
            record.line = lines[row];
            record.offset = offsets[row];
            record._row = row;
            job.map(record, emit);
          }
        } else {
          for (row = 0; row < n; row++) {
            record._row = row;
            job.map(record, emit);
          }
        }
        row = undefined;
        if (!t.grouping) return t.takeAll();
        if ((t.heldKeys() > HELD_KEYS || t.emitted >= FOLD_VALUES) && t.fold()) return t.takeAll();
        return writeBatch(t.pairNames, [...t.keyTypes, ...t.valueTypes], t.pairNames.map(() => []), "");
      }, currentRow);
    },

    flush() {
      row = undefined;
      return guarded(() => configured().takeAll(), currentRow);
    },

    combine(input) {
      row = undefined;
      return guarded(() => {
        const t = configured();
        const keys = rowsOf(readBatch(input.keys));
        const values = rowsOf(readBatch(input.values));
        const out = [];
        groupsOf(input).forEach(([start, end], g) => {
          row = start;
          out.push(t.job.combine(keys[g], values.slice(start, end)));
        });
        row = undefined;
        // The keys go back as they came, exactly.
        const what = `${JobClass.name}.combine returned`;
        const valueColumns = split(out, t.valueTypes.length, `${what} a value that`);
        return {
          numRows: out.length,
          names: t.pairNames,
          columns: [
            ...input.keys.columns,
            ...valueColumns.map((c, i) => writeColumn(t.valueTypes[i], c, what)),
          ],
        };
      }, currentRow);
    },

    reduce(input) {
      row = undefined;
      return guarded(() => {
        const t = configured();
        const keys = rowsOf(readBatch(input.keys));
        const values = rowsOf(readBatch(input.values));
        const width = t.outputTypes.length;
        const out = [];
        const emit = width === 1 ? (value) => out.push(value) : (...rowValues) => out.push(rowValues);
        groupsOf(input).forEach(([start, end], g) => {
          row = start;
          t.job.reduce(keys[g], values.slice(start, end), emit);
        });
        row = undefined;
        const what = `${JobClass.name}.reduce emitted`;
        return writeBatch(t.outputNames, t.outputTypes, split(out, width, `${what} a row that`), what);
      }, currentRow);
    },
  };
}
