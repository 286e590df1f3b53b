// A JavaScript job that misbehaves as `--param mode=...` says: `loop-map`
// (never returns), `grow` (allocates without end), `raise` (throws with a
// message of its own), `fetch` (fetches from `--param port=N`), `escape`
// (reports which of Node's escape hatches exist; JavaScript has no files to
// open here).

import { Job } from "./wmr.js";

export default class Hostile extends Job {
  key = "string";
  value = "string";
  output = "string";

  constructor(params) {
    super(params);
    this.mode = params.require("mode");
  }

  map(record, emit) {
    if (this.mode === "loop-map") {
      for (let n = 0; ; n++) {}
    }
    if (this.mode === "grow") {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    if (this.mode === "raise" && record.offset > 100) {
      throw new RangeError(`refusing the line at offset ${record.offset}`);
    }
    if (this.mode === "fetch") {
      // StarlingMonkey defines fetch, but wmr links no wasi:http for it.
      fetch(`http://127.0.0.1:${this.params.get("port")}/`).catch(() => {});
    }
    if (this.mode === "escape" && record.offset === 0) {
      emit("process", typeof process === "undefined" ? "absent" : "present");
      emit("require", typeof require === "undefined" ? "absent" : "present");
    }
  }

  reduce(key, values, emit) {
    for (const value of values) emit(`${key} ${value}`);
  }
}
