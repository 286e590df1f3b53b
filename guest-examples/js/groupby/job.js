// Group-by over Parquet (or any columnar) input: per value of the key
// column `--param key=COLUMN`, the sum and count of the numeric column
// `--param value=COLUMN`. Rows whose key or value is null are skipped and
// counted in the `rows.skipped_null` counter.

import { Job, count } from "./wmr.js";

export default class GroupBy extends Job {
  key = "string";
  value = ["f64", "u64"];

  constructor(params) {
    super(params);
    this.keyColumn = params.require("key");
    this.valueColumn = params.require("value");
    this.output = [[this.keyColumn, "string"], ["sum", "f64"], ["count", "u64"]];
  }

  map(record, emit) {
    const key = record.get(this.keyColumn);
    const value = record.get(this.valueColumn);
    if (key === null || value === null) count("rows.skipped_null");
    else emit(key, [Number(value), 1]);
  }

  combine(key, parts) {
    let sum = 0;
    let n = 0;
    for (const [s, c] of parts) {
      sum += s;
      n += c;
    }
    return [sum, n];
  }

  reduce(key, parts, emit) {
    const [sum, n] = this.combine(key, parts);
    emit(key, sum, n);
  }
}
