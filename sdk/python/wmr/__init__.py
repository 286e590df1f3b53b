"""wmr: write wmr MapReduce jobs in Python.

A job is a class with ``map``, an optional ``combine`` and ``reduce``,
exported as the component's entry points by ``wmr.export``::

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

``wmr build`` compiles it (with componentize-py) into one component that
``wmr run`` executes in a sandbox. Every call from the engine is one batch
of thousands of records in Arrow's columnar layout; this package turns a
batch into Python values once per batch, and emitted pairs back into
columns once per batch.

``emit(key, value)`` emits one pair; ``emit.each(keys, value)`` emits
``value`` with every key of an iterable, counted in C rather than in a
Python loop: the fast way to emit many keys with one value.
``emit.words(text, value)`` is ``emit.each(wmr.words(text), value)`` with
the words found and counted by the engine, at native speed (texts are sent
a few MiB at a time).

Types of keys, values and output columns: ``str``, ``bytes``, ``int``
(64-bit signed), ``wmr.u64`` (64-bit unsigned), ``float``, ``bool``, or a
tuple of them; any value may be ``None``.
"""

from ._job import Job, Params, Record, u64
from ._text import words
from ._host import count, log
from ._export import export

__all__ = ["Job", "Params", "Record", "u64", "words", "count", "log", "export"]
