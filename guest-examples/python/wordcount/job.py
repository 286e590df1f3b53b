"""Word count: how many times each word occurs in the input text."""

import wmr


class WordCount(wmr.Job):
    key = str
    value = wmr.u64
    output = [("word", str), ("count", wmr.u64)]

    def map(self, record, emit):
        emit.words(record.line, 1)

    def combine(self, word, counts):
        return sum(counts)

    def reduce(self, word, counts, emit):
        emit(word, sum(counts))


WitWorld = wmr.export(WordCount)
