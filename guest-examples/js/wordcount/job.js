// Word count: how many times each word occurs in the input text.

import { Job } from "./wmr.js";

export default class WordCount extends Job {
  key = "string";
  value = "u64";
  output = [["word", "string"], ["count", "u64"]];

  map(record, emit) {
    emit.words(record.line, 1);
  }

  combine(word, counts) {
    let total = 0;
    for (const n of counts) total += n;
    return total;
  }

  reduce(word, counts, emit) {
    emit(word, this.combine(word, counts));
  }
}
