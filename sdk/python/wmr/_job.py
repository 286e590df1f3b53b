"""What a job is: the ``Job`` base class, its parameters, and the records
``map`` reads."""


class u64(int):
    """The type of 64-bit unsigned integer columns: use it where a key,
    value or output column is declared (plain ``int`` is 64-bit signed).
    Values themselves are plain ints."""


class Params(dict):
    """The job's ``--param name=value`` pairs, as a dict of strings."""

    def require(self, name):
        """The value of parameter ``name``; a missing one rejects the job at
        submit with a line saying how to give it."""
        if name not in self:
            raise ValueError(f"missing job parameter {name!r}; give it with --param {name}=VALUE")
        return self[name]


class Job:
    """A MapReduce job. Subclass it, declare the types, and implement
    ``map`` and ``reduce`` (and ``combine`` to pre-aggregate map-side).

    Class attributes (or instance attributes set in ``__init__``):

    - ``key``, ``value``: the types ``map`` emits; a type or a tuple of types.
    - ``output``: the output columns, a list of ``(name, type)`` pairs (or a
      dict); a bare type or tuple of types gets the names ``key``,
      ``value``, ``value2``, ...
    - ``total_order``: part files in global key order (a range partitioner
      sampled from the input), as TeraSort does.
    - ``name``: shown by the engine; defaults to the class name.

    ``map`` is called once per input record, ``reduce`` once per distinct
    key with all of its values, in ascending key order within a reduce
    task. ``combine``, when a job defines it, may be called any number of
    times on any subset of a key's values, so it must be associative and
    commutative, like a sum.
    """

    key = str
    value = str
    output = str
    total_order = False

    def __init__(self, params):
        """Build the job from its ``--param``s (a :class:`Params`); raise to
        reject the job at submit with the exception's message."""
        self.params = params

    def map(self, record, emit):
        """Map one input :class:`Record`, calling ``emit(key, value)`` (or
        ``emit.each(keys, value)``, for every key of ``keys``, or
        ``emit.words(text, value)``, for every word of ``text`` as
        :func:`wmr.words` finds them) any number of times."""
        raise NotImplementedError(f"{type(self).__name__} does not define map")

    def combine(self, key, values):
        """Combine some of one key's values (a list) into one value."""
        raise NotImplementedError(f"{type(self).__name__} does not define combine")

    def reduce(self, key, values, emit):
        """Reduce all values of one key (a list) to output rows, calling
        ``emit(column, ...)`` once per row."""
        raise NotImplementedError(f"{type(self).__name__} does not define reduce")


class _Columns(dict):
    """A batch's columns by name; a missing name says which there are."""

    def __missing__(self, name):
        raise KeyError(f"input has no column {name!r}; its columns are: {', '.join(self)}")


class Record:
    """One input record, valid during the ``map`` call it is given to.

    For text input: ``line`` (without its line ending), ``file`` (the input
    file's path or URL) and ``offset`` (of the line's first byte in the
    file). For Parquet input, ``record["column"]`` or
    ``record.get("column")`` is the value of a column in this row, as
    ``str``, ``bytes``, ``int``, ``float``, ``bool`` or ``None``.
    """

    __slots__ = ("_columns", "_row", "file", "line", "offset")

    def __init__(self, file, columns):
        self.file = file
        self._columns = columns
        self._row = 0
        self.line = None
        self.offset = None

    def __getitem__(self, name):
        return self._columns[name][self._row]

    def get(self, name, default=None):
        """The value of column ``name`` in this row, or ``default`` if the
        input has no such column."""
        column = self._columns.get(name)
        return default if column is None else column[self._row]

    def columns(self):
        """The names of the input's columns."""
        return list(self._columns)

    def __repr__(self):
        if self.line is not None:
            return f"Record(file={self.file!r}, offset={self.offset!r}, line={self.line!r})"
        return f"Record({ {name: column[self._row] for name, column in self._columns.items()} })"
