//! Copies between `arrow` arrays and the WIT batch types, whole buffers at a
//! time. Everything coming back from a guest is validated before it becomes
//! an Arrow array: a malformed batch is an error naming what is wrong, never
//! a panic.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringArray, UInt64Array,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Int32Type;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::bindings::wmr::job::types as wit;
use super::dictionary::SentDictionaries;

/// The Arrow type a WIT type stands for.
pub(crate) fn arrow_type(t: wit::DataType) -> DataType {
    match t {
        wit::DataType::Utf8 => DataType::Utf8,
        wit::DataType::Binary => DataType::Binary,
        wit::DataType::Int64 => DataType::Int64,
        wit::DataType::Uint64 => DataType::UInt64,
        wit::DataType::Float64 => DataType::Float64,
        wit::DataType::Boolean => DataType::Boolean,
    }
}

/// Whether a batch column of this type can cross into a guest as is: one of
/// the WIT types, or dictionary-encoded strings (for `map` input).
pub fn is_guest_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::Binary | DataType::Int64 | DataType::UInt64 | DataType::Float64 | DataType::Boolean
    ) || is_dictionary_utf8(t)
}

/// Whether `t` is the dictionary-encoded string type (`Int32` codes) that
/// crosses into a guest's `map` as a `utf8-dictionary` column.
fn is_dictionary_utf8(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8)
}

/// A dictionary-encoded string column as a `utf8-dictionary` column: its
/// codes in the instance's dictionary for the column, with the values that
/// dictionary gains first (see [`SentDictionaries`]). `None` when it cannot
/// cross as one (a dictionary with nulls of its own, or codes out of its
/// range), to be sent plain instead.
fn dictionary_column(
    array: &DictionaryArray<Int32Type>,
    column: usize,
    sent: &mut SentDictionaries,
) -> Option<wit::ColumnData> {
    let values = array.values();
    let strings = values.as_any().downcast_ref::<StringArray>()?;
    if strings.null_count() > 0 {
        return None;
    }
    let keys = array.keys();
    // A null row's key may be anything (it crosses as 0); every other must
    // be in range. Checked before `sent` is told the guest has the values.
    let len = strings.len();
    let in_range = |&code: &i32| usize::try_from(code).is_ok_and(|c| c < len);
    let all_in_range = match keys.nulls() {
        None => keys.values().iter().all(in_range),
        Some(nulls) => keys
            .values()
            .iter()
            .zip(nulls.iter())
            .all(|(code, valid)| !valid || in_range(code)),
    };
    if !all_in_range {
        return None;
    }
    let coded = sent.code(column, strings);
    // Every key is in range (checked above), a null row's included.
    let recode = |&code: &i32| coded.codes.get(code as usize).copied().unwrap_or(0);
    let mut codes: Vec<u32> = keys.values().iter().map(recode).collect();
    if let Some(nulls) = keys.nulls() {
        // A null row's key is unspecified; it crosses as 0.
        for (code, valid) in codes.iter_mut().zip(nulls.iter()) {
            if !valid {
                *code = 0;
            }
        }
    }
    Some(wit::ColumnData::Utf8Dictionary(wit::Utf8Dictionary {
        dictionary: coded.id,
        values: coded.added,
        codes,
    }))
}

fn validity(array: &dyn Array) -> Vec<u8> {
    match array.nulls() {
        Some(nulls) if nulls.null_count() > 0 => {
            let bits = nulls.inner();
            if bits.offset() % 8 == 0 {
                let start = bits.offset() / 8;
                bits.values()[start..start + bits.len().div_ceil(8)].to_vec()
            } else {
                BooleanBuffer::from_iter(bits.iter()).values().to_vec()
            }
        }
        _ => Vec::new(),
    }
}

fn var_width(offsets: &[i32], values: &[u8]) -> wit::VarWidth {
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    wit::VarWidth {
        offsets: offsets.iter().map(|o| o - first).collect(),
        values: values[first as usize..last as usize].to_vec(),
    }
}

/// One Arrow column as a WIT column. Callers only pass [`is_guest_type`]
/// columns (inputs are normalised by `data`, and the rest was produced by
/// guests); anything else is reported as `Err(type)`. A dictionary column,
/// index `column` of its batch, crosses as `utf8-dictionary` when `sent`
/// is given, else plain.
pub(crate) fn to_wit_column(
    array: &ArrayRef,
    column: usize,
    sent: Option<&mut SentDictionaries>,
) -> Result<wit::Column, DataType> {
    let data = match array.data_type() {
        t if is_dictionary_utf8(t) => {
            let dictionary = array
                .as_any()
                .downcast_ref::<DictionaryArray<Int32Type>>()
                .ok_or_else(|| t.clone())?;
            match sent.and_then(|sent| dictionary_column(dictionary, column, sent)) {
                Some(data) => data,
                None => {
                    let plain = arrow::compute::cast(array, &DataType::Utf8).map_err(|_| t.clone())?;
                    return to_wit_column(&plain, column, None);
                }
            }
        }
        DataType::Utf8 => {
            let a = array.as_any().downcast_ref::<StringArray>().ok_or(DataType::Utf8)?;
            wit::ColumnData::Utf8(var_width(a.value_offsets(), a.values()))
        }
        DataType::Binary => {
            let a = array.as_any().downcast_ref::<BinaryArray>().ok_or(DataType::Binary)?;
            wit::ColumnData::Binary(var_width(a.value_offsets(), a.values()))
        }
        DataType::Int64 => {
            let a = array.as_any().downcast_ref::<Int64Array>().ok_or(DataType::Int64)?;
            wit::ColumnData::Int64(a.values().to_vec())
        }
        DataType::UInt64 => {
            let a = array.as_any().downcast_ref::<UInt64Array>().ok_or(DataType::UInt64)?;
            wit::ColumnData::Uint64(a.values().to_vec())
        }
        DataType::Float64 => {
            let a = array.as_any().downcast_ref::<Float64Array>().ok_or(DataType::Float64)?;
            wit::ColumnData::Float64(a.values().to_vec())
        }
        DataType::Boolean => {
            let a = array.as_any().downcast_ref::<BooleanArray>().ok_or(DataType::Boolean)?;
            let bits = a.values();
            let packed = if bits.offset() == 0 {
                bits.values()[..bits.len().div_ceil(8)].to_vec()
            } else {
                BooleanBuffer::from_iter(bits.iter()).values().to_vec()
            };
            wit::ColumnData::Boolean(packed)
        }
        other => return Err(other.clone()),
    };
    Ok(wit::Column {
        validity: validity(array.as_ref()),
        data,
    })
}

/// A record batch as a WIT batch: dictionary columns cross plain.
pub(crate) fn to_wit_batch(batch: &RecordBatch) -> Result<wit::Batch, DataType> {
    to_wit_batch_with(batch, None)
}

/// A record batch as a WIT batch, its dictionary columns as
/// `utf8-dictionary` ones when `sent` (the receiving instance's record of
/// dictionaries sent) is given.
pub(crate) fn to_wit_batch_with(
    batch: &RecordBatch,
    mut sent: Option<&mut SentDictionaries>,
) -> Result<wit::Batch, DataType> {
    Ok(wit::Batch {
        num_rows: batch.num_rows() as u32,
        names: batch.schema().fields().iter().map(|f| f.name().clone()).collect(),
        columns: batch
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| to_wit_column(c, i, sent.as_deref_mut()))
            .collect::<Result<_, _>>()?,
    })
}

fn wit_type_name(data: &wit::ColumnData) -> &'static str {
    match data {
        wit::ColumnData::Utf8(_) => "utf8",
        wit::ColumnData::Utf8Dictionary(_) => "utf8-dictionary",
        wit::ColumnData::Binary(_) => "binary",
        wit::ColumnData::Int64(_) => "int64",
        wit::ColumnData::Uint64(_) => "uint64",
        wit::ColumnData::Float64(_) => "float64",
        wit::ColumnData::Boolean(_) => "boolean",
    }
}

fn check_len(name: &str, got: usize, rows: usize) -> Result<(), String> {
    if got != rows {
        return Err(format!("column {name} has {got} values for {rows} rows"));
    }
    Ok(())
}

fn offsets(name: &str, v: Vec<i32>, rows: usize, values_len: usize) -> Result<OffsetBuffer<i32>, String> {
    if v.len() != rows + 1 {
        return Err(format!(
            "column {name} has {} offsets for {rows} rows (want rows + 1)",
            v.len()
        ));
    }
    let mut prev = 0i32;
    for (i, &o) in v.iter().enumerate() {
        if o < prev || (i == 0 && o != 0) {
            return Err(format!(
                "column {name} has offsets that start above 0 or go backwards at index {i}"
            ));
        }
        prev = o;
    }
    if prev as usize > values_len {
        return Err(format!(
            "column {name} has offsets up to {prev} past its {values_len} value bytes"
        ));
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(v)))
}

/// A WIT column as an Arrow array of `expected` type, validated.
fn from_wit_column(name: &str, col: wit::Column, rows: usize, expected: &DataType) -> Result<ArrayRef, String> {
    let nulls = if col.validity.is_empty() {
        None
    } else {
        if col.validity.len() * 8 < rows {
            return Err(format!(
                "column {name} has a validity bitmap of {} bytes for {rows} rows",
                col.validity.len()
            ));
        }
        Some(NullBuffer::new(BooleanBuffer::new(
            Buffer::from_vec(col.validity),
            0,
            rows,
        )))
    };
    let got = wit_type_name(&col.data);
    let array: ArrayRef = match (col.data, expected) {
        (wit::ColumnData::Utf8(v), DataType::Utf8) => {
            let offs = offsets(name, v.offsets, rows, v.values.len())?;
            Arc::new(
                StringArray::try_new(offs, Buffer::from_vec(v.values), nulls)
                    .map_err(|e| format!("column {name} is not valid utf8: {e}"))?,
            )
        }
        (wit::ColumnData::Binary(v), DataType::Binary) => {
            let offs = offsets(name, v.offsets, rows, v.values.len())?;
            Arc::new(
                BinaryArray::try_new(offs, Buffer::from_vec(v.values), nulls)
                    .map_err(|e| format!("column {name}: {e}"))?,
            )
        }
        (wit::ColumnData::Int64(v), DataType::Int64) => {
            check_len(name, v.len(), rows)?;
            Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls))
        }
        (wit::ColumnData::Uint64(v), DataType::UInt64) => {
            check_len(name, v.len(), rows)?;
            Arc::new(UInt64Array::new(ScalarBuffer::from(v), nulls))
        }
        (wit::ColumnData::Float64(v), DataType::Float64) => {
            check_len(name, v.len(), rows)?;
            Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
        }
        (wit::ColumnData::Boolean(v), DataType::Boolean) => {
            if v.len() * 8 < rows {
                return Err(format!(
                    "column {name} has {} bytes of booleans for {rows} rows",
                    v.len()
                ));
            }
            Arc::new(BooleanArray::new(
                BooleanBuffer::new(Buffer::from_vec(v), 0, rows),
                nulls,
            ))
        }
        (_, expected) => return Err(format!("column {name} is {got}, but the job declared {expected}")),
    };
    Ok(array)
}

/// A WIT batch as a record batch of `schema`, validated: column count,
/// types, lengths, offsets and UTF-8.
pub(crate) fn from_wit_batch(batch: wit::Batch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let rows = batch.num_rows as usize;
    if batch.columns.len() != schema.fields().len() {
        return Err(format!(
            "it has {} columns, but the job declared {}",
            batch.columns.len(),
            schema.fields().len()
        ));
    }
    let columns = batch
        .columns
        .into_iter()
        .zip(schema.fields())
        .map(|(col, field)| from_wit_column(field.name(), col, rows, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| e.to_string())
}

/// A schema of nullable columns with these names and types.
pub(crate) fn schema_of(names: impl IntoIterator<Item = String>, types: &[DataType]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .into_iter()
            .zip(types)
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sliced_columns_with_nulls() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc"), Some("dd")]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(4)]));
        let bools: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true, true]));
        let batch = RecordBatch::try_from_iter([("s", strings), ("i", ints), ("b", bools)])
            .unwrap()
            .slice(1, 3);
        let wit = to_wit_batch(&batch).unwrap();
        let schema = schema_of(
            ["s".into(), "i".into(), "b".into()],
            &[DataType::Utf8, DataType::Int64, DataType::Boolean],
        );
        let back = from_wit_batch(wit, &schema).unwrap();
        assert_eq!(back.num_rows(), 3);
        let s = back.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![None, Some("ccc"), Some("dd")]);
        let i = back.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(i.iter().collect::<Vec<_>>(), vec![Some(2), None, Some(4)]);
        let b = back.column(2).as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![Some(false), Some(true), Some(true)]);
    }

    #[test]
    fn a_dictionary_crosses_once_per_instance() {
        let words = StringArray::from(vec!["a", "bb", "ccc"]);
        let coded = |values: &StringArray, keys: Vec<Option<i32>>| -> ArrayRef {
            // A new array over the same buffers, as the Parquet decoder
            // hands out a column chunk's dictionary batch after batch.
            let values: ArrayRef = Arc::new(values.clone());
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys.into(), values).unwrap())
        };
        let data = |array: &ArrayRef, sent: &mut SentDictionaries| match to_wit_column(array, 1, Some(sent)).unwrap() {
            wit::Column {
                validity,
                data: wit::ColumnData::Utf8Dictionary(d),
            } => (d.dictionary, d.values.map(|v| v.offsets), d.codes, validity),
            other => panic!("sent as {}", wit_type_name(&other.data)),
        };
        let mut sent = SentDictionaries::default();
        let (id, values, codes, validity) = data(&coded(&words, vec![Some(2), None, Some(0)]), &mut sent);
        assert_eq!(
            (values, codes, validity),
            (Some(vec![0, 1, 3, 6]), vec![2, 0, 0], vec![0b101])
        );
        let again = data(&coded(&words, vec![Some(1)]), &mut sent);
        assert_eq!(again, (id, None, vec![1], vec![]));
        // Another row group's dictionary: its values keep the codes they
        // have, and only a new one is sent.
        let other = StringArray::from(vec!["ccc", "e", "a"]);
        let next = data(&coded(&other, vec![Some(0), Some(1), Some(2)]), &mut sent);
        assert_eq!(next, (id, Some(vec![0, 1]), vec![2, 3, 0], vec![]));
        assert_eq!(
            data(&coded(&other, vec![Some(1)]), &mut sent),
            (id, None, vec![3], vec![])
        );
        // Without a record of what was sent, the column crosses plain.
        match to_wit_column(&coded(&words, vec![Some(1), None]), 0, None).unwrap() {
            wit::Column {
                validity,
                data: wit::ColumnData::Utf8(v),
            } => assert_eq!(
                (v.offsets, v.values, validity),
                (vec![0, 2, 2], b"bb".to_vec(), vec![0b01])
            ),
            other => panic!("sent as {}", wit_type_name(&other.data)),
        }
    }

    #[test]
    fn rejects_malformed_guest_batches_with_a_reason() {
        let schema = schema_of(["k".into()], &[DataType::Utf8]);
        let bad_offsets = wit::Batch {
            num_rows: 2,
            names: vec!["k".into()],
            columns: vec![wit::Column {
                validity: vec![],
                data: wit::ColumnData::Utf8(wit::VarWidth {
                    offsets: vec![0, 5, 2],
                    values: b"hello".to_vec(),
                }),
            }],
        };
        let err = from_wit_batch(bad_offsets, &schema).unwrap_err();
        assert!(err.contains("go backwards at index 2"), "{err}");
        let past_end = wit::Batch {
            num_rows: 1,
            names: vec!["k".into()],
            columns: vec![wit::Column {
                validity: vec![],
                data: wit::ColumnData::Utf8(wit::VarWidth {
                    offsets: vec![0, 99],
                    values: b"hi".to_vec(),
                }),
            }],
        };
        assert!(
            from_wit_batch(past_end, &schema)
                .unwrap_err()
                .contains("past its 2 value bytes")
        );
        let wrong_type = wit::Batch {
            num_rows: 1,
            names: vec!["k".into()],
            columns: vec![wit::Column {
                validity: vec![],
                data: wit::ColumnData::Int64(vec![1]),
            }],
        };
        assert_eq!(
            from_wit_batch(wrong_type, &schema).unwrap_err(),
            "column k is int64, but the job declared Utf8"
        );
        let bad_utf8 = wit::Batch {
            num_rows: 1,
            names: vec!["k".into()],
            columns: vec![wit::Column {
                validity: vec![],
                data: wit::ColumnData::Utf8(wit::VarWidth {
                    offsets: vec![0, 2],
                    values: vec![0xff, 0xfe],
                }),
            }],
        };
        assert!(
            from_wit_batch(bad_utf8, &schema)
                .unwrap_err()
                .contains("not valid utf8")
        );
    }
}
