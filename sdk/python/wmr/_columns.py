"""Batches in Arrow's layout to Python lists and back, a whole column at a
time: the per-record work stays in the job, the per-batch work here."""

from itertools import accumulate

from wit_world.imports import types as wit

from ._job import u64

_DATA_TYPES = {
    str: wit.DataType.UTF8,
    bytes: wit.DataType.BINARY,
    int: wit.DataType.INT64,
    u64: wit.DataType.UINT64,
    float: wit.DataType.FLOAT64,
    bool: wit.DataType.BOOLEAN,
}

_I64 = (-(1 << 63), (1 << 63) - 1)
_U64 = (0, (1 << 64) - 1)


class SchemaError(ValueError):
    """A declared type that no column can carry."""


def data_types(declared, what):
    """The column types of a declared type: a type, or a tuple of types."""
    items = declared if isinstance(declared, tuple) else (declared,)
    if not items:
        raise SchemaError(f"{what} declares no types")
    out = []
    for item in items:
        data_type = _DATA_TYPES.get(item)
        if data_type is None:
            raise SchemaError(
                f"{what} declares {item!r}; the types are str, bytes, int, wmr.u64, float, bool, "
                "or a tuple of them"
            )
        out.append(data_type)
    return out


def output_fields(declared, what):
    """(names, data types) of the declared output: a list of (name, type)
    pairs, a dict, or a type / tuple of types with default names."""
    if isinstance(declared, dict):
        declared = list(declared.items())
    if isinstance(declared, list):
        names = []
        types = []
        for pair in declared:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise SchemaError(f"{what} must be (name, type) pairs; {pair!r} is not one")
            if isinstance(pair[1], tuple):
                raise SchemaError(f"{what} column {pair[0]!r} must have one type, not a tuple")
            names.append(pair[0])
            types.extend(data_types(pair[1], f"{what} column {pair[0]!r}"))
        return names, types
    types = data_types(declared, what)
    n = len(types)
    names = ["key" if i == 0 and n > 1 else "value" if i <= 1 else f"value{i}" for i in range(n)]
    return names, types


# --- reading -------------------------------------------------------------


def _unpack_bits(bits, n):
    """Bit ``i`` of an Arrow (LSB-first) bitmap, for ``i < n``, as bools."""
    number = int.from_bytes(bits, "little")
    text = format(number, "b").zfill(len(bits) * 8)[::-1]
    return [c == "1" for c in text[:n]]


def _var_width(data, n, as_text):
    offsets = data.offsets
    values = data.values
    if not as_text:
        return [values[a:b] for a, b in zip(offsets, offsets[1:n + 1])]
    if values.isascii():
        # One decode for the whole buffer; byte offsets are then character
        # offsets.
        text = values.decode("ascii")
        return [text[a:b] for a, b in zip(offsets, offsets[1:n + 1])]
    return [values[a:b].decode("utf-8", "replace") for a, b in zip(offsets, offsets[1:n + 1])]


# The dictionaries of dictionary-encoded ``map`` input columns, by column
# index: [id, parts sent and not decoded yet, values decoded so far as a
# list of str]. The host sends each value of a dictionary once, in parts
# appended to it, and then names it by id.
_dictionaries = {}


def receive_dictionaries(batch):
    """Keep the dictionary values ``batch`` brings (every one, read or not:
    a later batch may name them without sending them again)."""
    for i, column in enumerate(batch.columns):
        data = column.data
        if not isinstance(data, wit.ColumnData_Utf8Dictionary):
            continue
        sent = data.value
        held = _dictionaries.get(i)
        if sent.values is not None:
            if held is not None and held[0] == sent.dictionary:
                held[1].append(sent.values)
            else:
                _dictionaries[i] = [sent.dictionary, [sent.values], []]
        elif held is None or held[0] != sent.dictionary:
            raise RuntimeError(
                f"the host named dictionary {sent.dictionary} for input column {i} "
                "without sending it; this is a bug in wmr"
            )


def _dictionary_values(index, sent):
    held = _dictionaries.get(index)
    if held is None or held[0] != sent.dictionary:
        raise RuntimeError(f"dictionary {sent.dictionary} of input column {index} was never received")
    if held[1]:
        # Each distinct string is made once per dictionary, and every row
        # that has it shares it (with its hash, computed once).
        for part in held[1]:
            held[2].extend(_var_width(part, len(part.offsets) - 1, True))
        held[1] = []
    return held[2]


def read_column(column, n, index=None):
    """A column of ``n`` rows as a list of Python values (None for nulls);
    ``index`` is its place in a ``map`` input batch, for dictionaries."""
    data = column.data
    if isinstance(data, wit.ColumnData_Utf8):
        values = _var_width(data.value, n, True)
    elif isinstance(data, wit.ColumnData_Utf8Dictionary):
        strings = _dictionary_values(index, data.value)
        codes = data.value.codes[:n]
        try:
            values = list(map(strings.__getitem__, codes))
        except IndexError:
            # A null row's code (0) in an empty dictionary: made None by
            # the validity below.
            size = len(strings)
            values = [strings[c] if c < size else None for c in codes]
    elif isinstance(data, wit.ColumnData_Binary):
        values = _var_width(data.value, n, False)
    elif isinstance(data, wit.ColumnData_Boolean):
        values = _unpack_bits(data.value, n)
    else:
        values = data.value
        if not isinstance(values, list):
            values = list(values)
    if column.validity:
        valid = _unpack_bits(column.validity, n)
        if not all(valid):
            values = [v if ok else None for v, ok in zip(values, valid)]
    return values


def read_batch(batch):
    """A batch's columns, each a list, in order."""
    return [read_column(column, batch.num_rows) for column in batch.columns]


def rows(columns):
    """Columns as row values: the one column itself, or tuples across them."""
    if len(columns) == 1:
        return columns[0]
    return list(zip(*columns))


# --- writing -------------------------------------------------------------


def _pack_bits(flags):
    """Bools as an Arrow (LSB-first) bitmap."""
    if not flags:
        return b""
    text = "".join("1" if f else "0" for f in reversed(flags))
    return int(text, 2).to_bytes((len(flags) + 7) // 8, "little")


class ColumnTypeError(TypeError):
    """A value that does not fit its declared column."""


def _check_ints(values, bounds, what):
    """Raise unless every value (None aside) is an int within ``bounds``;
    C-speed passes over the list, not a Python loop."""
    present = [v for v in values if v is not None] if None in values else values
    if not present:
        return
    kinds = set(map(type, present))
    if not kinds <= {int, bool}:
        bad = next(v for v in present if type(v) not in (int, bool))
        raise ColumnTypeError(f"{what}: {bad!r} is not an integer")
    low, high = bounds
    if min(present) < low or max(present) > high:
        bad = next(v for v in present if v < low or v > high)
        kind = "unsigned " if low == 0 else ""
        raise ColumnTypeError(f"{what}: {bad!r} is out of range for a 64-bit {kind}integer")


def write_column(data_type, values, what):
    """A WIT column of ``values`` (a list) of ``data_type``."""
    nulls = None in values
    validity = b""
    if nulls:
        validity = _pack_bits([v is not None for v in values])
    if data_type == wit.DataType.UTF8 or data_type == wit.DataType.BINARY:
        text = data_type == wit.DataType.UTF8
        present = [v for v in values if v is not None] if nulls else values
        try:
            if text:
                joined = "".join(present)
                encoded = joined.encode("utf-8", "surrogatepass")
                if len(encoded) == len(joined):
                    # All ASCII: character lengths are byte lengths.
                    lengths = map(len, values) if not nulls else (0 if v is None else len(v) for v in values)
                    buffer = encoded
                else:
                    parts = [b"" if v is None else v.encode("utf-8", "surrogatepass") for v in values]
                    lengths = map(len, parts)
                    buffer = b"".join(parts)
            else:
                if not set(map(type, present)) <= {bytes, bytearray, memoryview}:
                    raise TypeError("not bytes")
                parts = [b"" if v is None else bytes(v) for v in values]
                lengths = map(len, parts)
                buffer = b"".join(parts)
        except TypeError as e:
            wanted = "str" if text else "bytes"
            bad = next((v for v in values if v is not None and not isinstance(v, str if text else (bytes, bytearray, memoryview))), None)
            raise ColumnTypeError(f"{what}: {bad!r} is not {wanted}") from e
        offsets = list(accumulate(lengths, initial=0))
        if offsets[-1] > 0x7FFFFFFF:
            raise ColumnTypeError(f"{what}: more than 2 GiB of text in one batch")
        var = wit.VarWidth(offsets=offsets, values=buffer)
        data = wit.ColumnData_Utf8(var) if text else wit.ColumnData_Binary(var)
    elif data_type == wit.DataType.INT64 or data_type == wit.DataType.UINT64:
        signed = data_type == wit.DataType.INT64
        _check_ints(values, _I64 if signed else _U64, what)
        filled = [0 if v is None else v for v in values] if nulls else values
        data = wit.ColumnData_Int64(filled) if signed else wit.ColumnData_Uint64(filled)
    elif data_type == wit.DataType.FLOAT64:
        try:
            filled = [0.0 if v is None else float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise ColumnTypeError(f"{what}: {e}") from e
        data = wit.ColumnData_Float64(filled)
    else:
        present = [v for v in values if v is not None] if nulls else values
        if not set(map(type, present)) <= {bool}:
            bad = next(v for v in present if type(v) is not bool)
            raise ColumnTypeError(f"{what}: {bad!r} is not a bool")
        data = wit.ColumnData_Boolean(_pack_bits([v is True for v in values]))
    return wit.Column(validity=validity, data=data)


def write_batch(names, data_types, columns, what):
    """A WIT batch of parallel ``columns`` (lists) named ``names``."""
    n = len(columns[0]) if columns else 0
    return wit.Batch(
        num_rows=n,
        names=list(names),
        columns=[
            write_column(t, c, f"{what} column {name!r}") for name, t, c in zip(names, data_types, columns)
        ],
    )


def split(values, width, what):
    """Row values (tuples when ``width`` > 1) as ``width`` columns."""
    if width == 1:
        return [values]
    if values and (set(map(type, values)) != {tuple} or set(map(len, values)) != {width}):
        bad = next(v for v in values if type(v) is not tuple or len(v) != width)
        raise ColumnTypeError(f"{what}: {bad!r} is not a tuple of {width}")
    return [list(c) for c in zip(*values)] if values else [[] for _ in range(width)]
