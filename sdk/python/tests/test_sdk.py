"""Unit tests of the Python SDK under CPython, with the WIT world's
generated bindings on the path (`cargo xtask test` generates them) and the
host's functions stubbed."""

import unittest

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports import types as wit

import wmr
from wmr import _columns as columns
from wmr import _export

sent_counters = []
host.add_counters = lambda deltas: sent_counters.append(dict(deltas))
host.log = lambda level, message: None
counted_texts = []


def count_words(text):
    # The host's count-words, stubbed: the same words, counted.
    counted_texts.append(text)
    counts = {}
    for word in wmr.words(text):
        counts[word] = counts.get(word, 0) + 1
    return host.WordCounts(words="".join(f"{word}\n" for word in counts), counts=list(counts.values()))


host.count_words = count_words


def text_batch(lines):
    encoded = [line.encode() for line in lines]
    offsets = [0]
    for e in encoded:
        offsets.append(offsets[-1] + len(e))
    positions = list(range(0, 10 * len(lines), 10))
    return wit.Batch(
        num_rows=len(lines),
        names=["offset", "line"],
        columns=[
            wit.Column(validity=b"", data=wit.ColumnData_Int64(positions)),
            wit.Column(validity=b"", data=wit.ColumnData_Utf8(wit.VarWidth(offsets=offsets, values=b"".join(encoded)))),
        ],
    )


def pairs(batch):
    cols = columns.read_batch(batch)
    return sorted(zip(*cols))


class WordCount(wmr.Job):
    key = str
    value = wmr.u64
    output = [("word", str), ("count", wmr.u64)]

    def map(self, record, emit):
        for word in wmr.words(record.line):
            emit(word, 1)
        wmr.count("lines")

    def combine(self, word, counts):
        return sum(counts)

    def reduce(self, word, counts, emit):
        emit(word, sum(counts))


class WordsTest(unittest.TestCase):
    def test_words_are_runs_of_letters_as_in_rust(self):
        self.assertEqual(wmr.words("It's a café, Ñandú!"), ["It", "s", "a", "café", "Ñandú"])
        self.assertEqual(
            wmr.words("  ab1cd--ÉTÉ  x\U0001F600y  日本語 "), ["ab", "cd", "ÉTÉ", "x", "y", "日本語"]
        )
        self.assertEqual(wmr.words(""), [])
        self.assertEqual(wmr.words("!!"), [])
        # Combining marks are Alphabetic for some scripts (Devanagari's vowel signs).
        self.assertEqual(wmr.words("हिन्दी"), ["हिन", "दी"])


class ColumnsTest(unittest.TestCase):
    def roundtrip(self, data_type, values):
        column = columns.write_column(data_type, values, "test")
        return columns.read_column(column, len(values))

    def test_every_type_comes_back_with_its_nulls(self):
        cases = [
            (wit.DataType.UTF8, ["a", None, "héllo", ""]),
            (wit.DataType.UTF8, ["plain", "ascii"]),
            (wit.DataType.BINARY, [b"\x00\xff", None, b""]),
            (wit.DataType.INT64, [-(1 << 63), None, (1 << 63) - 1]),
            (wit.DataType.UINT64, [0, (1 << 64) - 1, None]),
            (wit.DataType.FLOAT64, [1.5, None, -0.0]),
            (wit.DataType.BOOLEAN, [True, False, None, True, True, False, False, True, True]),
        ]
        for data_type, values in cases:
            with self.subTest(data_type=data_type, values=values):
                self.assertEqual(self.roundtrip(data_type, values), values)

    def test_a_value_of_the_wrong_type_names_itself(self):
        with self.assertRaisesRegex(columns.ColumnTypeError, "test: 'x' is not an integer"):
            columns.write_column(wit.DataType.INT64, [1, "x"], "test")
        with self.assertRaisesRegex(columns.ColumnTypeError, "out of range for a 64-bit unsigned"):
            columns.write_column(wit.DataType.UINT64, [-1], "test")
        with self.assertRaisesRegex(columns.ColumnTypeError, "test: 3 is not str"):
            columns.write_column(wit.DataType.UTF8, ["a", 3], "test")
        with self.assertRaisesRegex(columns.ColumnTypeError, "is not a tuple of 2"):
            columns.split([(1, 2), (3,)], 2, "test")
        with self.assertRaisesRegex(columns.ColumnTypeError, "test: 10 is not bytes"):
            columns.write_column(wit.DataType.BINARY, [b"a", 10], "test")
        with self.assertRaisesRegex(columns.ColumnTypeError, "test: 'False' is not a bool"):
            columns.write_column(wit.DataType.BOOLEAN, [True, "False"], "test")

    def test_declared_types_and_output_names(self):
        self.assertEqual(columns.data_types((str, wmr.u64), "k"), [wit.DataType.UTF8, wit.DataType.UINT64])
        with self.assertRaisesRegex(columns.SchemaError, "declares <class 'list'>"):
            columns.data_types(list, "k")
        self.assertEqual(columns.output_fields((str, int, float), "o")[0], ["key", "value", "value2"])
        self.assertEqual(columns.output_fields({"w": str, "n": int}, "o")[0], ["w", "n"])
        with self.assertRaisesRegex(columns.SchemaError, "column 'kv' must have one type"):
            columns.output_fields([("kv", (str, int))], "o")


class ExportTest(unittest.TestCase):
    def setUp(self):
        sent_counters.clear()

    def world(self, cls, params=()):
        world = wmr.export(cls)()
        info = world.configure(list(params))
        return world, info

    def test_configure_describes_the_job(self):
        _, info = self.world(WordCount)
        self.assertEqual(info.name, "WordCount")
        self.assertTrue(info.combines)
        self.assertEqual([f.name for f in info.output], ["word", "count"])

    def test_map_combines_across_calls_until_flush(self):
        world, _ = self.world(WordCount)
        first = world.map("a.txt", text_batch(["a b a", "b c"]))
        self.assertEqual(first.num_rows, 0)
        world.map("a.txt", text_batch(["a"]))
        self.assertEqual(pairs(world.flush()), [("a", 3), ("b", 2), ("c", 1)])
        self.assertEqual(sum(d.get("lines", 0) for d in sent_counters), 3)

    def assert_grouping_stops_when_keys_are_distinct(self, job):
        world, _ = self.world(job)
        lines = ["".join(chr(ord("a") + int(d)) for d in f"{i:06d}") for i in range(_export.HELD_KEYS + 1)]
        out = world.map("a.txt", text_batch(lines))
        self.assertEqual(out.num_rows, len(lines))
        self.assertFalse(_export._task.grouping)
        out = world.map("a.txt", text_batch(["x y x"]))
        self.assertEqual(pairs(out), [("x", 1), ("x", 1), ("y", 1)])

    def test_keys_a_fold_carried_do_not_stop_grouping(self):
        held, fold = _export.HELD_KEYS, _export.FOLD_VALUES
        _export.HELD_KEYS, _export.FOLD_VALUES = 15, 20
        try:
            world, _ = self.world(WordCount)
            keys = [f"k{chr(ord('a') + i)}" for i in range(12)]
            # 24 values of 12 keys: folded to 12, half removed, kept.
            self.assertEqual(world.map("a.txt", text_batch([" ".join(keys * 2)])).num_rows, 0)
            self.assertEqual(_export._task.carried, 12)
            # 8 more values, all of held keys: the fold removes all 8 of
            # them (the 12 carried values are not judged again).
            self.assertEqual(world.map("a.txt", text_batch([" ".join(keys[:8])])).num_rows, 0)
            self.assertTrue(_export._task.grouping)
            self.assertEqual(pairs(world.flush()), [(k, 3 if i < 8 else 2) for i, k in enumerate(keys)])
            # Distinct keys since the fold stop it.
            world, _ = self.world(WordCount)
            world.map("a.txt", text_batch([" ".join(keys * 2)]))
            out = world.map("a.txt", text_batch([" ".join(f"x{chr(ord('a') + i)}" for i in range(8))]))
            self.assertFalse(_export._task.grouping)
            self.assertEqual(out.num_rows, 20)
        finally:
            _export.HELD_KEYS, _export.FOLD_VALUES = held, fold

    def test_grouping_stops_when_keys_are_distinct(self):
        self.assert_grouping_stops_when_keys_are_distinct(WordCount)

    def test_emit_each_counts_like_emit(self):
        class EachCount(WordCount):
            def map(self, record, emit):
                emit.each(wmr.words(record.line), 1)
                emit("total", len(wmr.words(record.line)))

        world, _ = self.world(EachCount)
        world.map("a.txt", text_batch(["a b a", "b c"]))
        world.map("a.txt", text_batch(["a total"]))
        # "total": 7 words from emit, plus the word "total" itself from each.
        self.assertEqual(pairs(world.flush()), [("a", 3), ("b", 2), ("c", 1), ("total", 8)])

    def test_emit_words_counts_like_emit_each_in_one_host_call_per_value(self):
        class Words(WordCount):
            def map(self, record, emit):
                emit.words(record.line, 1)
                emit.words(record.line, 10)

        world, _ = self.world(Words)
        counted_texts.clear()
        world.map("a.txt", text_batch(["a b a", "b, c!"]))
        world.map("a.txt", text_batch(["a"]))
        # Held across calls, then counted in one call per distinct value.
        self.assertEqual(counted_texts, [])
        self.assertEqual(pairs(world.flush()), [("a", 33), ("b", 22), ("c", 11)])
        self.assertEqual(counted_texts, ["a b a\nb, c!\na", "a b a\nb, c!\na"])
        with self.assertRaises(Err) as caught:

            class NotText(WordCount):
                def map(self, record, emit):
                    emit.words(b"bytes", 1)

            self.world(NotText)[0].map("a.txt", text_batch(["x"]))
        self.assertIn("emit.words takes a str, not bytes", caught.exception.value.message)

        # Texts are sent before too many wait, and a text too long to send
        # is counted in the guest.
        limit = _export.PENDING_WORD_BYTES
        _export.PENDING_WORD_BYTES = 8
        try:
            world, _ = self.world(Words)
            counted_texts.clear()
            world.map("a.txt", text_batch(["a b", "c d", "a very long line"]))
            self.assertEqual(counted_texts, ["a b", "a b"])
            self.assertEqual(
                pairs(world.flush()), [("a", 22), ("b", 11), ("c", 11), ("d", 11), ("line", 11), ("long", 11), ("very", 11)]
            )
            self.assertEqual(counted_texts, ["a b", "a b", "c d", "c d"])
            # One value every time: the texts wait together up to the
            # limit all the same.
            class Once(WordCount):
                def map(self, record, emit):
                    emit.words(record.line, 1)

            world, _ = self.world(Once)
            counted_texts.clear()
            world.map("a.txt", text_batch(["a b", "c d", "e f"]))
            self.assertEqual(counted_texts, ["a b\nc d"])
            self.assertEqual(pairs(world.flush()), [(w, 1) for w in "abcdef"])
            self.assertEqual(counted_texts, ["a b\nc d", "e f"])
        finally:
            _export.PENDING_WORD_BYTES = limit

        # Without a combine, every occurrence is emitted.
        class NoCombine(WordCount):
            combine = wmr.Job.combine

            def map(self, record, emit):
                emit.words(record.line, 2)

        world, _ = self.world(NoCombine)
        self.assertEqual(pairs(world.map("a.txt", text_batch(["a b a"]))), [("a", 2), ("a", 2), ("b", 2)])

    def test_emit_each_hands_combine_bounded_lists(self):
        lengths = []

        class Chunked(WordCount):
            def map(self, record, emit):
                emit.each(record.line.split(), 2)

            def combine(self, word, counts):
                lengths.append(len(counts))
                return sum(counts)

        world, _ = self.world(Chunked)
        n = 3 * _export.REPEAT_CHUNK + 5
        world.map("a.txt", text_batch([" ".join(["w"] * n), "v"]))
        self.assertEqual(pairs(world.flush()), [("v", 2), ("w", 2 * n)])
        self.assertLessEqual(max(lengths), _export.REPEAT_CHUNK)

    def test_emit_each_once_grouping_stopped(self):
        class Each(WordCount):
            def map(self, record, emit):
                emit.each(wmr.words(record.line), 1)

        self.assert_grouping_stops_when_keys_are_distinct(Each)

    def test_emit_each_takes_unhashable_values_and_keeps_signs_and_types_apart(self):
        class Blobs(wmr.Job):
            key = str
            value = bytes

            def map(self, record, emit):
                emit.each(record.line.split(), bytearray(b"x"))

            def combine(self, key, values):
                return b"".join(values)

        world, _ = self.world(Blobs)
        world.map("a.txt", text_batch(["a b a"]))
        self.assertEqual(pairs(world.flush()), [("a", b"xx"), ("b", b"x")])

        class Signs(wmr.Job):
            def combine(self, key, values):
                return values[0]

        self.world(Signs)
        task = _export._task
        emit = task.emitter()
        emit.each(["n"], -0.0)
        emit.each(["p"], 0.0)
        emit.each(["t"], (True, 1))
        emit.each(["u"], (1, 1))
        self.assertEqual(len(task.counted), 4)

    def test_emit_each_refuses_a_value_that_is_no_column_value(self):
        class Bad(WordCount):
            def map(self, record, emit):
                emit.each(["a"], [1])

        world, _ = self.world(Bad)
        world.map("a.txt", text_batch(["x"]))
        with self.assertRaises(Err) as caught:
            world.flush()
        self.assertIn("[1] is not an integer", caught.exception.value.message)

    def test_reduce_and_combine_take_groups(self):
        world, _ = self.world(WordCount)
        keys = columns.write_batch(["c0"], [wit.DataType.UTF8], [["a", "b"]], "")
        values = columns.write_batch(["c1"], [wit.DataType.UINT64], [[1, 2, 3]], "")
        grouped = wit.Grouped(keys=keys, values=values, group_ends=[2, 3])
        self.assertEqual(pairs(world.reduce(grouped)), [("a", 3), ("b", 3)])
        self.assertEqual(pairs(world.combine(grouped)), [("a", 3), ("b", 3)])

    def test_an_exception_is_the_error_with_its_row(self):
        class Picky(WordCount):
            def map(self, record, emit):
                if "bad" in record.line:
                    raise ValueError("bad line")

        world, _ = self.world(Picky)
        with self.assertRaises(Err) as caught:
            world.map("a.txt", text_batch(["fine", "also fine", "bad"]))
        error = caught.exception.value
        self.assertEqual(error.row, 2)
        self.assertTrue(error.message.startswith("ValueError: bad line (test_sdk.py line "), error.message)

    def test_a_missing_param_rejects_the_job(self):
        class Needs(WordCount):
            def __init__(self, params):
                self.pattern = params.require("pattern")

        with self.assertRaises(Err) as caught:
            self.world(Needs)
        self.assertIn("give it with --param pattern=VALUE", caught.exception.value)

    def test_parquet_columns_by_name(self):
        class Sum(wmr.Job):
            key = str
            value = float

            def map(self, record, emit):
                emit(record["k"], record.get("v"))

            def reduce(self, key, values, emit):
                emit(sum(values))

        world, _ = self.world(Sum)
        batch = columns.write_batch(
            ["k", "v"], [wit.DataType.UTF8, wit.DataType.FLOAT64], [["x", "y"], [1.0, 2.5]], ""
        )
        self.assertEqual(pairs(world.map("t.parquet", batch)), [("x", 1.0), ("y", 2.5)])

        class Missing(Sum):
            def map(self, record, emit):
                record["nope"]

        world, _ = self.world(Missing)
        with self.assertRaises(Err) as caught:
            world.map("t.parquet", batch)
        self.assertIn("input has no column 'nope'; its columns are: k, v", caught.exception.value.message)

    def test_dictionary_columns_are_kept_across_batches(self):
        class Count(wmr.Job):
            key = str
            value = wmr.u64

            def map(self, record, emit):
                emit(record["k"] if record["k"] is not None else "(null)", 1)

            def reduce(self, key, values, emit):
                emit(sum(values))

        def coded(dictionary, words, codes, validity=b""):
            values = None
            if words is not None:
                encoded = [w.encode() for w in words]
                offsets = [0]
                for e in encoded:
                    offsets.append(offsets[-1] + len(e))
                values = wit.VarWidth(offsets=offsets, values=b"".join(encoded))
            data = wit.ColumnData_Utf8Dictionary(wit.Utf8Dictionary(dictionary=dictionary, values=values, codes=codes))
            other = wit.Column(validity=b"", data=wit.ColumnData_Int64(list(range(len(codes)))))
            return wit.Batch(num_rows=len(codes), names=["n", "k"], columns=[other, wit.Column(validity=validity, data=data)])

        world, _ = self.world(Count)
        self.assertEqual(
            pairs(world.map("t.parquet", coded(7, ["a", "é"], [0, 1, 1, 0], b"\x0b"))),
            [("(null)", 1), ("a", 1), ("a", 1), ("é", 1)],
        )
        # Named again without its values: the one kept is used.
        self.assertEqual(pairs(world.map("t.parquet", coded(7, None, [1]))), [("é", 1)])
        # Values sent again under its id are appended to it.
        self.assertEqual(pairs(world.map("t.parquet", coded(7, ["z"], [2, 0]))), [("a", 1), ("z", 1)])
        with self.assertRaises(Err) as caught:
            world.map("t.parquet", coded(8, None, [0]))
        self.assertIn("without sending it", caught.exception.value.message)
        # Only nulls: an empty dictionary, and code 0 for each.
        self.assertEqual(pairs(world.map("t.parquet", coded(9, [], [0, 0], b"\x00"))), [("(null)", 1), ("(null)", 1)])


if __name__ == "__main__":
    unittest.main()
