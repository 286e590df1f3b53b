"""Counters and log lines, the two things a job tells the engine besides
its output. Counters are summed here and sent once per call."""

_counters = {}

_LEVELS = ("debug", "info", "warn", "error")


def count(name, delta=1):
    """Add ``delta`` to the job counter ``name``. Counters are summed over
    every committed task and shown with the job's results."""
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise TypeError(f"counter {name!r}: the delta must be an int, not {type(delta).__name__}")
    _counters[name] = _counters.get(name, 0) + delta


def log(message, level="info"):
    """Write a line to this task's log, which the engine captures (capped in
    size). ``level`` is one of "debug", "info", "warn", "error"."""
    from wit_world.imports import host

    if level not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    host.log(host.LogLevel[level.upper()], str(message))


def flush_counters():
    """Send the counters added since the last call to the engine."""
    if not _counters:
        return
    from wit_world.imports import host

    deltas = [(name, delta) for name, delta in _counters.items() if delta]
    _counters.clear()
    if deltas:
        host.add_counters(deltas)


def count_words(text):
    """The words of ``text`` (as ``wmr.words`` finds them), counted by the
    host at native speed: (word, count) pairs, each word once."""
    from wit_world.imports import host

    counted = host.count_words(text)
    # Each word is followed by a newline: the last piece is empty, and zip
    # stops at the counts.
    return zip(counted.words.split("\n"), counted.counts)
