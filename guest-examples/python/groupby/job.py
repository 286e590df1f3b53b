"""Group-by over Parquet (or any columnar) input: per value of the key
column `--param key=COLUMN`, the sum and count of the numeric column
`--param value=COLUMN`. Rows whose key or value is null are skipped and
counted in the `rows.skipped_null` counter."""

import wmr


class GroupBy(wmr.Job):
    key = str
    value = (float, wmr.u64)

    def __init__(self, params):
        self.key_column = params.require("key")
        self.value_column = params.require("value")
        self.output = [(self.key_column, str), ("sum", float), ("count", wmr.u64)]

    def map(self, record, emit):
        key = record[self.key_column]
        value = record[self.value_column]
        if key is None or value is None:
            wmr.count("rows.skipped_null")
        else:
            emit(key, (float(value), 1))

    def combine(self, key, parts):
        return (sum(s for s, _ in parts), sum(n for _, n in parts))

    def reduce(self, key, parts, emit):
        total, n = self.combine(key, parts)
        emit(key, total, n)


WitWorld = wmr.export(GroupBy)
