"""The glue between the component's exports (the `wmr:job` WIT world) and a
:class:`wmr.Job`: one configured job per instance, batches decoded and
encoded a column at a time, in-mapper combining that turns itself off when
it does not pay, and exceptions turned into the attempt's error with the
input row."""

import gc
import os
import traceback
from collections import defaultdict
from itertools import repeat

try:
    # The C loop behind Counter.update: counts an iterable's items in a dict.
    from collections import _count_elements
except ImportError:  # pragma: no cover - CPython always has it
    def _count_elements(counts, items):
        get = counts.get
        for item in items:
            counts[item] = get(item, 0) + 1

from componentize_py_types import Err
from wit_world.imports import types as wit

from . import _columns as columns
from . import _host
from ._job import Job, Params, Record
from ._text import words as _words

# Combining in the mapper, checked after every call: the held values are
# folded (one `combine` call per held key) once FOLD_VALUES have come
# since the last fold, and sent on once more than HELD_KEYS distinct keys
# are held; this bounds the guest's memory (some 150 bytes a key, 8 a
# value: some 65 MB, besides one batch's keys and the text `emit.words`
# holds). A text's vocabulary is a few hundred thousand words: held whole,
# each word leaves a split once, and the engine has nothing to combine.
FOLD_VALUES = 500_000
HELD_KEYS = 400_000

# `combine` is handed at most this many copies of one value at a time when
# `emit.each` has counted them (a key seen a million times in a split is
# not a list of a million values).
REPEAT_CHUNK = 4096
# `emit.words` sends its texts to the host to count before more than this
# many bytes of UTF-8 would wait (ASCII texts counted exactly, others as 4
# bytes a character, and a byte for each separator; the host takes 16
# MiB); when the held pairs are folded or taken; and at the end of a `map`
# call that does not group. The more text per call, the fewer words come
# back twice. A longer text is counted here.
PENDING_WORD_BYTES = 12 << 20

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))

# No value at all (not even None): what `emit.words` last saw before any.
_NOTHING = object()


def _where(error):
    """`(file line N, in F)` of the job's own frame nearest the error."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(_SDK_DIR)]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return ""
    return f" ({os.path.basename(frame.filename)} line {frame.lineno}, in {frame.name})"


def _describe(error):
    text = str(error)
    name = type(error).__name__
    return (f"{name}: {text}" if text else name) + _where(error)


def _guest_error(error, row):
    return Err(wit.GuestError(message=_describe(error), row=row))


class _Lazy(dict):
    """A batch's columns by name, each decoded on first use."""

    def __init__(self, batch):
        super().__init__()
        self._batch = batch
        self._index = {name: i for i, name in enumerate(batch.names)}

    def __missing__(self, name):
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"input has no column {name!r}; its columns are: {', '.join(self._batch.names)}")
        column = columns.read_column(self._batch.columns[i], self._batch.num_rows, i)
        self[name] = column
        return column

    def get(self, name, default=None):
        return self[name] if name in self._index else default

    def __iter__(self):
        return iter(self._batch.names)


class _Task:
    """The configured job and what a map task has held back."""

    def __init__(self, job):
        self.job = job
        what = type(job).__name__
        self.key_types = columns.data_types(job.key, f"{what}.key")
        self.value_types = columns.data_types(job.value, f"{what}.value")
        self.output_names, self.output_types = columns.output_fields(job.output, f"{what}.output")
        self.combines = type(job).combine is not Job.combine
        self.pair_names = [f"c{i}" for i in range(len(self.key_types) + len(self.value_types))]
        self.grouping = self.combines
        self.held = defaultdict(list)
        # How many values `emit` has added to `held` since the last fold
        # (counted as they come: adding up the held lists after every call
        # would walk every held key).
        self.emitted = _Count()
        # How many of the held values are what the last fold left (one a
        # key): the next fold judges only the values that came since.
        self.carried = 0
        # What `emit.each` sent while grouping: for each distinct value
        # (with its type), how many times each key came with it.
        self.counted = {}
        self.keys = []
        self.values = []
        # What `emit.words` was given and the host has not counted yet: for
        # each distinct value, the value and its texts.
        self.pending_words = {}
        self.pending_bytes = 0
        # The value `emit.words` was last given (the object itself) and its
        # list of waiting texts, so that a job passing the same value every
        # time (a word count's 1) skips working out its identity.
        self.last_words = [_NOTHING, None]

    def emitter(self):
        """The `emit(key, value)` handed to `map`, with `emit.each(keys,
        value)`."""
        if self.grouping:
            held = self.held
            counted = self.counted
            emitted = self.emitted

            def emit(key, value):
                held[key].append(value)
                emitted.n += 1

            def each(keys, value):
                try:
                    identity = _value_identity(value)
                    counts = counted.get(identity)
                except (TypeError, ValueError):
                    # Unhashable (a bytearray, say): emitted one by one.
                    for key in keys:
                        emit(key, value)
                    return
                if counts is None:
                    counts = counted[identity] = {}
                _count_elements(counts, keys)

        else:
            keys_out = self.keys
            values_out = self.values
            add_key = keys_out.append
            add_value = values_out.append

            def emit(key, value):
                add_key(key)
                add_value(value)

            def each(keys, value):
                before = len(keys_out)
                keys_out.extend(keys)
                values_out.extend(repeat(value, len(keys_out) - before))

        pending = self.pending_words
        last = self.last_words

        def words(text, value=1):
            if text.__class__ is not str:
                raise TypeError(f"emit.words takes a str, not {type(text).__name__}")
            if value is last[0]:
                size = (len(text) if text.isascii() else 4 * len(text)) + 1
                if self.pending_bytes + size <= PENDING_WORD_BYTES:
                    last[1].append(text)
                    self.pending_bytes += size
                    return
            try:
                identity = _value_identity(value)
                waiting = pending.get(identity)
            except (TypeError, ValueError):
                each(_words(text), value)
                return
            size = (len(text) if text.isascii() else 4 * len(text)) + 1
            if size > PENDING_WORD_BYTES:
                each(_words(text), value)
                return
            if self.pending_bytes + size > PENDING_WORD_BYTES:
                self.count_pending_words()
                waiting = None
            if waiting is None:
                waiting = pending[identity] = (value, [])
            waiting[1].append(text)
            self.pending_bytes += size
            last[0] = value
            last[1] = waiting[1]

        emit.each = each
        emit.words = words
        return emit

    def count_pending_words(self):
        """Have the host count the words of the texts `emit.words` was given
        (at native speed, one call per distinct value), and emit them: each
        distinct word counted once while grouping, else every occurrence."""
        pending = list(self.pending_words.values())
        self.pending_words.clear()
        self.pending_bytes = 0
        self.last_words[0] = _NOTHING
        self.last_words[1] = None
        for value, texts in pending:
            counted = _host.count_words("\n".join(texts))
            if self.grouping:
                identity = _value_identity(value)
                counts = self.counted.get(identity)
                if counts is None:
                    counts = self.counted[identity] = {}
                get = counts.get
                for word, n in counted:
                    counts[word] = get(word, 0) + n
            else:
                for word, n in counted:
                    self.keys.extend(repeat(word, n))
                    self.values.extend(repeat(value, n))

    def held_keys(self):
        """How many keys are held (a key held both ways counts twice)."""
        return len(self.held) + sum(map(len, self.counted.values()))

    def _take_counted(self, combine):
        """Move what `emit.each` counted into `held`: a key's copies of one
        value become one combined value. Returns how many values there were."""
        held = self.held
        total = 0
        for (_, value), counts in self.counted.items():
            total += sum(counts.values())
            for key, n in counts.items():
                held[key].append(value if n == 1 else _combine_copies(combine, key, value, n))
        self.counted.clear()
        return total

    def pairs(self, keys, values):
        """Key and value columns as a batch."""
        what = type(self.job).__name__
        key_columns = columns.split(keys, len(self.key_types), f"{what}.map emitted a key that")
        value_columns = columns.split(values, len(self.value_types), f"{what}.map emitted a value that")
        return columns.write_batch(
            self.pair_names,
            self.key_types + self.value_types,
            key_columns + value_columns,
            f"{what}.map emitted",
        )

    def fold(self):
        """Combine each held key's values into one; stop grouping when keys
        are mostly distinct (as DuckDB and Spark stop partial aggregation).
        Returns whether the held pairs should be sent on now."""
        self.count_pending_words()
        held = self.held
        combine = self.job.combine
        total = sum(map(len, held.values())) + self._take_counted(combine)
        for key, values in held.items():
            if len(values) > 1:
                values[:] = [combine(key, values)]
        # Judged on the values since the last fold: the keys it left, one
        # value each, would otherwise make a fold with many keys carried
        # look like one that removed nothing.
        fresh = total - self.carried
        if 2 * (total - len(held)) < fresh:
            self.grouping = False
        self.carried = len(held)
        self.emitted.n = 0
        return not self.grouping or len(held) > HELD_KEYS

    def take_all(self):
        """Everything held and emitted so far, combined where grouped, as
        one batch; nothing held after."""
        self.count_pending_words()
        held = self.held
        combine = self.job.combine
        if not held and len(self.counted) == 1:
            # Only what `emit.each` or `emit.words` counted with one value
            # (a word count): each key straight out, its copies combined.
            ((_, value), counts), = self.counted.items()
            keys = list(counts)
            values = [value if n == 1 else _combine_copies(combine, key, value, n) for key, n in counts.items()]
            self.counted.clear()
        else:
            self._take_counted(combine)
            keys = list(held)
            values = [v[0] if len(v) == 1 else combine(k, v) for k, v in held.items()]
            held.clear()
        self.carried = 0
        self.emitted.n = 0
        if self.keys:
            keys += self.keys
            values += self.values
            self.keys.clear()
            self.values.clear()
        return self.pairs(keys, values)


class _Count:
    """A count a closure can raise (a slot, faster than a cell)."""

    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


def _value_identity(value):
    """What tells `emit.each`'s values apart: equal values of one type are
    one, except where equality would merge what a column keeps apart (0.0
    and -0.0; True and 1 inside a tuple), which go by their repr."""
    kind = value.__class__
    if kind is float or kind is tuple:
        hash(value)  # an unhashable tuple is refused here, as any other value
        return (kind, repr(value))
    return (kind, value)


def _combine_copies(combine, key, value, n):
    """`combine(key, [value] * n)`, in lists of at most REPEAT_CHUNK values:
    copies are combined a chunk at a time, then the chunks' results."""
    if n <= REPEAT_CHUNK:
        return combine(key, [value] * n)
    chunks, rest = divmod(n, REPEAT_CHUNK)
    whole = combine(key, [value] * REPEAT_CHUNK)
    parts = [_combine_copies(combine, key, whole, chunks)]
    if rest:
        parts.append(combine(key, [value] * rest))
    return parts[0] if len(parts) == 1 else combine(key, parts)


_task = None


def _collect_later():
    """No cyclic garbage collection during a call: the SDK's own objects
    (a list of values per held key, many of them) form no cycles, and
    collecting would walk them all again and again. A job's own cycles are
    collected between calls."""
    gc.disable()


def _configured():
    if _task is None:
        raise RuntimeError("the job was called before configure")
    return _task


def _empty(names, types):
    return columns.write_batch(names, types, [[] for _ in names], "")


def _groups(grouped):
    """(first row, key, values) of each group of a grouped batch; keys and
    values are decoded once, for the whole batch."""
    keys = columns.rows(columns.read_batch(grouped.keys))
    values = columns.rows(columns.read_batch(grouped.values))
    start = 0
    for key, end in zip(keys, grouped.group_ends):
        yield start, key, values[start:end]
        start = end


def export(cls):
    """The component's entry points for the job class ``cls``; assign the
    result to ``WitWorld`` in the job's module::

        WitWorld = wmr.export(WordCount)
    """
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise TypeError(f"wmr.export takes a subclass of wmr.Job, not {cls!r}")

    class WitWorld:
        def configure(self, params):
            global _task
            try:
                job = cls(Params(params))
                _task = _Task(job)
                info = wit.JobInfo(
                    name=str(getattr(job, "name", None) or cls.__name__),
                    key_types=_task.key_types,
                    value_types=_task.value_types,
                    output=[
                        wit.Field(name=n, data_type=t, nullable=True)
                        for n, t in zip(_task.output_names, _task.output_types)
                    ],
                    combines=_task.combines,
                    total_order=bool(getattr(job, "total_order", False)),
                )
            except Exception as e:
                raise Err(_describe(e))
            finally:
                gc.enable()
                _host.flush_counters()
            return info

        def map(self, source, input):
            row = None
            _collect_later()
            try:
                task = _configured()
                n = input.num_rows
                columns.receive_dictionaries(input)
                batch_columns = _Lazy(input)
                record = Record(source, batch_columns)
                emit = task.emitter()
                job_map = task.job.map
                row = 0
                if "line" in batch_columns._index and "offset" in batch_columns._index:
                    lines = batch_columns["line"]
                    offsets = batch_columns["offset"]
                    for row in range(n):
                        record.line = lines[row]
                        record.offset = offsets[row]
                        record._row = row
                        job_map(record, emit)
                else:
                    for row in range(n):
                        record._row = row
                        job_map(record, emit)
                row = None
                if not task.grouping:
                    return task.take_all()
                if task.held_keys() > HELD_KEYS or task.emitted.n >= FOLD_VALUES:
                    if task.fold():
                        return task.take_all()
                return _empty(task.pair_names, task.key_types + task.value_types)
            except Exception as e:
                raise _guest_error(e, row)
            finally:
                gc.enable()
                _host.flush_counters()

        def flush(self):
            try:
                return _configured().take_all()
            except Exception as e:
                raise _guest_error(e, None)
            finally:
                gc.enable()
                _host.flush_counters()

        def combine(self, input):
            row = None
            _collect_later()
            try:
                task = _configured()
                combine = task.job.combine
                out = []
                for row, key, values in _groups(input):
                    out.append(combine(key, values))
                row = None
                what = type(task.job).__name__
                value_columns = columns.split(out, len(task.value_types), f"{what}.combine returned a value that")
                return wit.Batch(
                    num_rows=len(out),
                    names=task.pair_names,
                    columns=input.keys.columns
                    + [
                        columns.write_column(t, c, f"{what}.combine returned")
                        for t, c in zip(task.value_types, value_columns)
                    ],
                )
            except Exception as e:
                raise _guest_error(e, row)
            finally:
                gc.enable()
                _host.flush_counters()

        def reduce(self, input):
            row = None
            _collect_later()
            try:
                task = _configured()
                width = len(task.output_types)
                out = []
                if width == 1:
                    add = out.append

                    def emit(value):
                        add(value)
                else:
                    add = out.append

                    def emit(*row_values):
                        add(row_values)

                reduce = task.job.reduce
                for row, key, values in _groups(input):
                    reduce(key, values, emit)
                row = None
                what = f"{cls.__name__}.reduce emitted a row that"
                return columns.write_batch(
                    task.output_names,
                    task.output_types,
                    columns.split(out, width, what),
                    f"{cls.__name__}.reduce emitted",
                )
            except Exception as e:
                raise _guest_error(e, row)
            finally:
                gc.enable()
                _host.flush_counters()

    WitWorld.__name__ = "WitWorld"
    WitWorld.__qualname__ = f"export({cls.__name__})"
    return WitWorld

