//! Group-by over Parquet (or any columnar) input: per value of the key column
//! `--param key=COLUMN`, the sum and count of the numeric column
//! `--param value=COLUMN`. Rows whose key or value is null are skipped and
//! counted in the `rows.skipped_null` counter.

use wmr_sdk::{Emit, Job, Output, Params, Records, Values};

struct GroupBy {
    key: String,
    value: String,
}

impl GroupBy {
    fn from_params(params: &Params) -> Result<GroupBy, String> {
        Ok(GroupBy {
            key: params.require("key")?.to_string(),
            value: params.require("value")?.to_string(),
        })
    }
}

impl Job for GroupBy {
    type Key = String;
    type Value = (f64, u64);
    type Output = (String, f64, u64);
    const COMBINES: bool = true;

    fn output_names(&self) -> Vec<String> {
        vec![self.key.clone(), "sum".into(), "count".into()]
    }

    /// Column by column: the key column is found once per batch, and a
    /// dictionary-encoded one (Parquet's usual) is grouped by its codes.
    fn map_batch(&self, records: &Records, out: &mut Emit<String, (f64, u64)>) {
        let keys = records.strings(&self.key);
        let values = records.values::<f64>(&self.value).map(|v| v.map(|v| (v, 1)));
        let skipped = out.emit_column(&keys, values);
        if skipped > 0 {
            wmr_sdk::count("rows.skipped_null", skipped as i64);
        }
    }

    fn combine(&self, _key: &String, parts: Values<(f64, u64)>) -> (f64, u64) {
        parts.fold((0.0, 0), |(s, n), (ps, pn)| (s + ps, n + pn))
    }

    fn reduce(&self, key: String, parts: Values<(f64, u64)>, out: &mut Output<(String, f64, u64)>) {
        let (sum, count) = self.combine(&key, parts);
        out.push((key, sum, count));
    }
}

wmr_sdk::export_job!(GroupBy, GroupBy::from_params);
