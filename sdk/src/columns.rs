//! Columns in Arrow's layout, built and read inside the guest.
//!
//! [`ColumnBuilder`] grows one column of a batch the guest will return;
//! [`Columns`] maps a Rust type (a primitive or a tuple of them) onto one or
//! more columns; [`IntoColumns`] lets borrowed forms (`&str`, `&[u8]`, tuples
//! of them) be written where an owned type is expected, without allocating.

use crate::bindings::wmr::job::types::{Column, ColumnData, DataType, VarWidth};

/// A column under construction: Arrow buffers, grown row by row.
// Public only because the sealed traits' hidden methods name it; nothing
// outside this crate can construct or use one.
#[doc(hidden)]
#[derive(Debug)]
pub struct ColumnBuilder {
    validity: Vec<u8>,
    has_nulls: bool,
    len: usize,
    data: BuilderData,
}

#[derive(Debug)]
enum BuilderData {
    Utf8 { offsets: Vec<i32>, values: Vec<u8> },
    Binary { offsets: Vec<i32>, values: Vec<u8> },
    Int64(Vec<i64>),
    UInt64(Vec<u64>),
    Float64(Vec<f64>),
    Boolean(Vec<u8>),
}

impl ColumnBuilder {
    pub(crate) fn new(data_type: DataType) -> Self {
        let data = match data_type {
            DataType::Utf8 => BuilderData::Utf8 {
                offsets: vec![0],
                values: Vec::new(),
            },
            DataType::Binary => BuilderData::Binary {
                offsets: vec![0],
                values: Vec::new(),
            },
            DataType::Int64 => BuilderData::Int64(Vec::new()),
            DataType::Uint64 => BuilderData::UInt64(Vec::new()),
            DataType::Float64 => BuilderData::Float64(Vec::new()),
            DataType::Boolean => BuilderData::Boolean(Vec::new()),
        };
        ColumnBuilder {
            validity: Vec::new(),
            has_nulls: false,
            len: 0,
            data,
        }
    }

    fn push_valid(&mut self, valid: bool) {
        let bit = self.len % 8;
        if bit == 0 {
            self.validity.push(0);
        }
        if valid {
            if let Some(last) = self.validity.last_mut() {
                *last |= 1 << bit;
            }
        } else {
            self.has_nulls = true;
        }
        self.len += 1;
    }

    fn type_mismatch(&self, wanted: &str) -> ! {
        panic!(
            "wmr-sdk: wrote a {wanted} into a {} column; the job's declared types and what it emits disagree",
            self.kind()
        )
    }

    fn kind(&self) -> &'static str {
        match self.data {
            BuilderData::Utf8 { .. } => "utf8",
            BuilderData::Binary { .. } => "binary",
            BuilderData::Int64(_) => "int64",
            BuilderData::UInt64(_) => "uint64",
            BuilderData::Float64(_) => "float64",
            BuilderData::Boolean(_) => "boolean",
        }
    }

    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        match &mut self.data {
            BuilderData::Utf8 { offsets, values } | BuilderData::Binary { offsets, values } => {
                values.extend_from_slice(bytes);
                offsets.push(offset_of(values.len()));
            }
            _ => self.type_mismatch("string"),
        }
        self.push_valid(true);
    }

    pub(crate) fn push_i64(&mut self, v: i64) {
        match &mut self.data {
            BuilderData::Int64(values) => values.push(v),
            _ => self.type_mismatch("i64"),
        }
        self.push_valid(true);
    }

    pub(crate) fn push_u64(&mut self, v: u64) {
        match &mut self.data {
            BuilderData::UInt64(values) => values.push(v),
            _ => self.type_mismatch("u64"),
        }
        self.push_valid(true);
    }

    pub(crate) fn push_f64(&mut self, v: f64) {
        match &mut self.data {
            BuilderData::Float64(values) => values.push(v),
            _ => self.type_mismatch("f64"),
        }
        self.push_valid(true);
    }

    pub(crate) fn push_bool(&mut self, v: bool) {
        let bit = self.len % 8;
        match &mut self.data {
            BuilderData::Boolean(bits) => {
                if bit == 0 {
                    bits.push(0);
                }
                if v && let Some(last) = bits.last_mut() {
                    *last |= 1 << bit;
                }
            }
            _ => self.type_mismatch("bool"),
        }
        self.push_valid(true);
    }

    pub(crate) fn push_null(&mut self) {
        let bit = self.len % 8;
        match &mut self.data {
            BuilderData::Utf8 { offsets, values } | BuilderData::Binary { offsets, values } => {
                offsets.push(offset_of(values.len()))
            }
            BuilderData::Int64(v) => v.push(0),
            BuilderData::UInt64(v) => v.push(0),
            BuilderData::Float64(v) => v.push(0.0),
            BuilderData::Boolean(bits) => {
                if bit == 0 {
                    bits.push(0)
                }
            }
        }
        self.push_valid(false);
    }

    pub(crate) fn finish(self) -> Column {
        let validity = if self.has_nulls { self.validity } else { Vec::new() };
        let data = match self.data {
            BuilderData::Utf8 { offsets, values } => ColumnData::Utf8(VarWidth { offsets, values }),
            BuilderData::Binary { offsets, values } => ColumnData::Binary(VarWidth { offsets, values }),
            BuilderData::Int64(v) => ColumnData::Int64(v),
            BuilderData::UInt64(v) => ColumnData::Uint64(v),
            BuilderData::Float64(v) => ColumnData::Float64(v),
            BuilderData::Boolean(v) => ColumnData::Boolean(v),
        };
        Column { validity, data }
    }
}

fn offset_of(len: usize) -> i32 {
    // Arrow's utf8/binary use i32 offsets: a single batch column holds at most
    // 2 GiB. The host sends input batches far below that; a guest that emits
    // more than 2 GiB from one batch has to fail loudly, not wrap around.
    i32::try_from(len).unwrap_or_else(|_| panic!("wmr-sdk: one output batch column exceeds 2 GiB of string data"))
}

/// Reading values out of a column the host sent.
pub(crate) fn is_valid(col: &Column, row: usize) -> bool {
    validity_bit(&col.validity, row)
}

/// Whether row `row` is valid by the bitmap `validity` (empty: all are).
#[inline]
pub(crate) fn validity_bit(validity: &[u8], row: usize) -> bool {
    validity.is_empty() || validity.get(row / 8).is_some_and(|b| b & (1 << (row % 8)) != 0)
}

pub(crate) fn var_width(v: &VarWidth, row: usize) -> &[u8] {
    let start = v.offsets.get(row).copied().unwrap_or(0).max(0) as usize;
    let end = v.offsets.get(row + 1).copied().unwrap_or(0).max(0) as usize;
    v.values.get(start..end).unwrap_or(&[])
}

pub(crate) fn type_name(data: &ColumnData) -> &'static str {
    match data {
        ColumnData::Utf8(_) => "utf8",
        ColumnData::Utf8Dictionary(_) => "utf8 (dictionary-encoded)",
        ColumnData::Binary(_) => "binary",
        ColumnData::Int64(_) => "int64",
        ColumnData::Uint64(_) => "uint64",
        ColumnData::Float64(_) => "float64",
        ColumnData::Boolean(_) => "boolean",
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A single value type a column can hold: `String`, `Vec<u8>`, `i64`, `u64`,
/// `f64`, `bool`, and `Option` of any of these for nullable columns.
///
/// ```
/// fn takes_field<T: wmr_sdk::Field>() {}
/// takes_field::<String>();
/// takes_field::<Option<i64>>();
/// ```
pub trait Field: Sized + Default + sealed::Sealed {
    /// The column type this value is stored as.
    #[doc(hidden)]
    fn data_type() -> DataType;
    /// Append this value to a column.
    #[doc(hidden)]
    fn append(&self, col: &mut ColumnBuilder);
    /// Read row `row` of `col`; `None` if null or of an incompatible type.
    #[doc(hidden)]
    fn read(col: &Column, row: usize) -> Option<Self>;
    /// The value whose [`IntoField::encode`] encoding starts `encoded`,
    /// which is advanced past it.
    #[doc(hidden)]
    fn decode_part(encoded: &mut &[u8]) -> Option<Self>;
    /// The value whose [`IntoField::encode_alone`] encoding is `encoded`.
    #[doc(hidden)]
    fn decode_alone(mut encoded: &[u8]) -> Option<Self> {
        Self::decode_part(&mut encoded).filter(|_| encoded.is_empty())
    }
}

fn take_chunk<const N: usize>(encoded: &mut &[u8]) -> Option<[u8; N]> {
    let (chunk, rest) = encoded.split_first_chunk::<N>()?;
    *encoded = rest;
    Some(*chunk)
}

fn take_var<'e>(encoded: &mut &'e [u8]) -> Option<&'e [u8]> {
    let len = u32::from_le_bytes(take_chunk::<4>(encoded)?) as usize;
    let (value, rest) = encoded.split_at_checked(len)?;
    *encoded = rest;
    Some(value)
}

macro_rules! fixed_field {
    ($t:ty, $dt:ident, $push:ident, $from_le:expr, $($variant:ident => $conv:expr),+) => {
        impl sealed::Sealed for $t {}
        impl Field for $t {
            fn data_type() -> DataType { DataType::$dt }
            fn decode_part(encoded: &mut &[u8]) -> Option<Self> { take_chunk::<8>(encoded).map($from_le) }
            fn append(&self, col: &mut ColumnBuilder) { col.$push(*self) }
            fn read(col: &Column, row: usize) -> Option<Self> {
                if !is_valid(col, row) { return None; }
                match &col.data {
                    $(ColumnData::$variant(v) => v.get(row).map($conv),)+
                    _ => None,
                }
            }
        }
    };
}

fixed_field!(i64, Int64, push_i64, i64::from_le_bytes, Int64 => |v: &i64| *v, Uint64 => |v: &u64| *v as i64);
fixed_field!(u64, Uint64, push_u64, u64::from_le_bytes, Uint64 => |v: &u64| *v, Int64 => |v: &i64| *v as u64);
fixed_field!(f64, Float64, push_f64, |b| f64::from_bits(u64::from_le_bytes(b)), Float64 => |v: &f64| *v, Int64 => |v: &i64| *v as f64, Uint64 => |v: &u64| *v as f64);

impl sealed::Sealed for bool {}
impl Field for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn append(&self, col: &mut ColumnBuilder) {
        col.push_bool(*self)
    }
    fn decode_part(encoded: &mut &[u8]) -> Option<Self> {
        take_chunk::<1>(encoded).map(|[b]| b != 0)
    }
    fn read(col: &Column, row: usize) -> Option<Self> {
        match &col.data {
            ColumnData::Boolean(bits) if is_valid(col, row) => bits.get(row / 8).map(|b| b & (1 << (row % 8)) != 0),
            _ => None,
        }
    }
}

impl sealed::Sealed for String {}
impl Field for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn append(&self, col: &mut ColumnBuilder) {
        col.push_bytes(self.as_bytes())
    }
    fn decode_part(encoded: &mut &[u8]) -> Option<Self> {
        take_var(encoded).and_then(|v| String::from_utf8(v.to_vec()).ok())
    }
    fn decode_alone(encoded: &[u8]) -> Option<Self> {
        String::from_utf8(encoded.to_vec()).ok()
    }
    fn read(col: &Column, row: usize) -> Option<Self> {
        match &col.data {
            ColumnData::Utf8(v) if is_valid(col, row) => {
                let bytes = var_width(v, row);
                Some(match std::str::from_utf8(bytes) {
                    Ok(text) => text.to_owned(),
                    Err(_) => String::from_utf8_lossy(bytes).into_owned(),
                })
            }
            _ => None,
        }
    }
}

impl sealed::Sealed for Vec<u8> {}
impl Field for Vec<u8> {
    fn data_type() -> DataType {
        DataType::Binary
    }
    fn append(&self, col: &mut ColumnBuilder) {
        col.push_bytes(self)
    }
    fn decode_part(encoded: &mut &[u8]) -> Option<Self> {
        take_var(encoded).map(<[u8]>::to_vec)
    }
    fn decode_alone(encoded: &[u8]) -> Option<Self> {
        Some(encoded.to_vec())
    }
    fn read(col: &Column, row: usize) -> Option<Self> {
        match &col.data {
            ColumnData::Binary(v) | ColumnData::Utf8(v) if is_valid(col, row) => Some(var_width(v, row).to_vec()),
            _ => None,
        }
    }
}

impl<T: Field> sealed::Sealed for Option<T> {}
impl<T: Field> Field for Option<T> {
    fn data_type() -> DataType {
        T::data_type()
    }
    fn append(&self, col: &mut ColumnBuilder) {
        match self {
            Some(v) => v.append(col),
            None => col.push_null(),
        }
    }
    fn read(col: &Column, row: usize) -> Option<Self> {
        Some(T::read(col, row))
    }
    fn decode_part(encoded: &mut &[u8]) -> Option<Self> {
        match take_chunk::<1>(encoded)? {
            [0] => Some(None),
            [1] => T::decode_part(encoded).map(Some),
            _ => None,
        }
    }
    fn decode_alone(encoded: &[u8]) -> Option<Self> {
        match encoded.split_first()? {
            (0, []) => Some(None),
            (1, rest) => T::decode_alone(rest).map(Some),
            _ => None,
        }
    }
}

/// A Rust type stored as one or more columns: any [`Field`], or a tuple of up
/// to four fields (a multi-column key, value or output row).
///
/// ```
/// fn takes_columns<T: wmr_sdk::Columns>() {}
/// takes_columns::<String>();
/// takes_columns::<(String, i64, bool)>();
/// ```
/// (`Default` gives the in-mapper combiner empty slots to fill.)
pub trait Columns: Sized + Default {
    /// The column types, in order.
    #[doc(hidden)]
    fn data_types() -> Vec<DataType>;
    /// Append this value's parts to `cols` (exactly `data_types().len()` of them).
    #[doc(hidden)]
    fn append(&self, cols: &mut [ColumnBuilder]);
    /// Read row `row` from `cols`; `None` if a part is null or mistyped.
    #[doc(hidden)]
    fn read(cols: &[Column], row: usize) -> Option<Self>;
    /// The value whose [`IntoColumns::encode`] encoding is `encoded`.
    #[doc(hidden)]
    fn decode(encoded: &[u8]) -> Option<Self>;
}

impl<T: Field> Columns for T {
    fn data_types() -> Vec<DataType> {
        vec![T::data_type()]
    }
    fn append(&self, cols: &mut [ColumnBuilder]) {
        if let Some(col) = cols.first_mut() {
            Field::append(self, col)
        }
    }
    fn read(cols: &[Column], row: usize) -> Option<Self> {
        cols.first().and_then(|c| T::read(c, row))
    }
    fn decode(encoded: &[u8]) -> Option<Self> {
        T::decode_alone(encoded)
    }
}

macro_rules! tuple_columns {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Field),+> Columns for ($($name,)+) {
            fn data_types() -> Vec<DataType> { vec![$($name::data_type()),+] }
            fn append(&self, cols: &mut [ColumnBuilder]) {
                $(if let Some(col) = cols.get_mut($idx) { self.$idx.append(col) })+
            }
            fn read(cols: &[Column], row: usize) -> Option<Self> {
                Some(($($name::read(cols.get($idx)?, row)?,)+))
            }
            fn decode(mut encoded: &[u8]) -> Option<Self> {
                let value = ($($name::decode_part(&mut encoded)?,)+);
                encoded.is_empty().then_some(value)
            }
        }
    };
}
tuple_columns!(A 0);
tuple_columns!(A 0, B 1);
tuple_columns!(A 0, B 1, C 2);
tuple_columns!(A 0, B 1, C 2, D 3);

/// Something that can be written where a `T` is expected, such as `&str` for
/// a `String` key, `&[u8]` for `Vec<u8>`, or a tuple of such parts for a
/// tuple key, so emitting never has to allocate.
///
/// ```
/// fn takes<K, Q: wmr_sdk::IntoColumns<K>>(_: Q) {}
/// takes::<String, _>("borrowed");
/// takes::<(String, i64), _>(("word", 3_i64));
/// ```
pub trait IntoColumns<T> {
    /// Append to `cols`, one column per part of `T`.
    #[doc(hidden)]
    fn append_to(&self, cols: &mut [ColumnBuilder]);
    /// Append a byte encoding that is equal exactly for equal values.
    #[doc(hidden)]
    fn encode(&self, buf: &mut Vec<u8>);
    /// Make the owned value.
    #[doc(hidden)]
    fn to_owned_value(&self) -> T;
    /// The value as a string, when it is one string.
    #[doc(hidden)]
    fn as_text(&self) -> Option<&str> {
        None
    }
}

/// A single field's borrowed form, written into one column.
#[doc(hidden)]
pub trait IntoField<T> {
    fn append_one(&self, col: &mut ColumnBuilder);
    fn encode(&self, buf: &mut Vec<u8>);
    /// The value as a string, when it is one.
    fn as_text(&self) -> Option<&str> {
        None
    }
    /// The encoding when nothing follows it, which needs no length prefix.
    fn encode_alone(&self, buf: &mut Vec<u8>) {
        self.encode(buf)
    }
    fn to_owned_value(&self) -> T;
}

/// Byte equality in 8-byte words: on wasm32, slice `==` becomes a call to a
/// byte-at-a-time `memcmp`, which dominated the in-mapper combiner's profile.
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    a_words
        .iter()
        .zip(b_words)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_tail.iter().zip(b_tail).all(|(x, y)| x == y)
}

impl<T, Q: IntoField<T>> IntoColumns<T> for Q
where
    T: Field,
{
    fn append_to(&self, cols: &mut [ColumnBuilder]) {
        if let Some(col) = cols.first_mut() {
            self.append_one(col)
        }
    }
    fn encode(&self, buf: &mut Vec<u8>) {
        self.encode_alone(buf)
    }
    fn to_owned_value(&self) -> T {
        IntoField::to_owned_value(self)
    }
    fn as_text(&self) -> Option<&str> {
        IntoField::as_text(self)
    }
}

/// Variable-width values are encoded as their length (4 bytes) then their bytes.
fn encode_var(bytes: &[u8], buf: &mut Vec<u8>) {
    let len = u32::try_from(bytes.len()).unwrap_or_else(|_| panic!("wmr-sdk: a key part over 4 GiB"));
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

macro_rules! into_field_str {
    ($owned:ty: $($t:ty => |$s:ident| $bytes:expr, $own:expr, $text:expr;)+) => {$(
        impl IntoField<$owned> for $t {
            fn append_one(&self, col: &mut ColumnBuilder) { let $s = self; col.push_bytes($bytes) }
            fn encode(&self, buf: &mut Vec<u8>) { let $s = self; encode_var($bytes, buf) }
            fn encode_alone(&self, buf: &mut Vec<u8>) { let $s = self; buf.extend_from_slice($bytes) }
            fn to_owned_value(&self) -> $owned { let $s = self; $own }
            fn as_text(&self) -> Option<&str> {
                #[allow(unused_variables, reason = "byte strings have no text")]
                let $s = self;
                $text
            }
        }
    )+};
}
into_field_str!(String:
    &str => |s| s.as_bytes(), s.to_string(), Some(s);
    String => |s| s.as_bytes(), s.clone(), Some(s.as_str());
    &String => |s| s.as_bytes(), (*s).clone(), Some(s.as_str());
);
into_field_str!(Vec<u8>:
    &[u8] => |s| s, s.to_vec(), None;
    Vec<u8> => |s| s.as_slice(), s.clone(), None;
    &Vec<u8> => |s| s.as_slice(), (*s).clone(), None;
);

macro_rules! into_field_copy {
    ($($t:ty => $bits:expr;)+) => {$(
        impl IntoField<$t> for $t {
            fn append_one(&self, col: &mut ColumnBuilder) { Field::append(self, col) }
            fn encode(&self, buf: &mut Vec<u8>) { buf.extend_from_slice(&$bits(*self).to_le_bytes()) }
            fn to_owned_value(&self) -> $t { *self }
        }
        impl IntoField<$t> for &$t {
            fn append_one(&self, col: &mut ColumnBuilder) { Field::append(*self, col) }
            fn encode(&self, buf: &mut Vec<u8>) { buf.extend_from_slice(&$bits(**self).to_le_bytes()) }
            fn to_owned_value(&self) -> $t { **self }
        }
    )+};
}
into_field_copy!(
    i64 => |v: i64| v;
    u64 => |v: u64| v;
    f64 => |v: f64| v.to_bits();
    bool => |v: bool| u8::from(v);
);

impl<T: Field + Clone> IntoField<Option<T>> for Option<T>
where
    T: IntoField<T>,
{
    fn append_one(&self, col: &mut ColumnBuilder) {
        Field::append(self, col)
    }
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            None => buf.push(0),
            Some(v) => {
                buf.push(1);
                IntoField::encode(v, buf)
            }
        }
    }
    fn encode_alone(&self, buf: &mut Vec<u8>) {
        match self {
            None => buf.push(0),
            Some(v) => {
                buf.push(1);
                v.encode_alone(buf)
            }
        }
    }
    fn to_owned_value(&self) -> Option<T> {
        self.clone()
    }
}

macro_rules! tuple_into {
    ($($name:ident $q:ident $idx:tt),+) => {
        impl<$($name: Field, $q: IntoField<$name>),+> IntoColumns<($($name,)+)> for ($($q,)+) {
            fn append_to(&self, cols: &mut [ColumnBuilder]) {
                $(if let Some(col) = cols.get_mut($idx) { self.$idx.append_one(col) })+
            }
            fn encode(&self, buf: &mut Vec<u8>) { $(self.$idx.encode(buf);)+ }
            fn to_owned_value(&self) -> ($($name,)+) { ($(self.$idx.to_owned_value(),)+) }
        }
    };
}
tuple_into!(A QA 0);
tuple_into!(A QA 0, B QB 1);
tuple_into!(A QA 0, B QB 1, C QC 2);
tuple_into!(A QA 0, B QB 1, C QC 2, D QD 3);

/// Start one builder per column of `T`.
pub(crate) fn builders_for<T: Columns>() -> Vec<ColumnBuilder> {
    T::data_types().into_iter().map(ColumnBuilder::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_eq_compares_every_byte() {
        assert!(bytes_eq(b"", b""));
        assert!(bytes_eq(b"0123456789", b"0123456789"));
        assert!(!bytes_eq(b"0123456789", b"0123456780"));
        assert!(!bytes_eq(b"0123456789", b"1123456789"));
        assert!(!bytes_eq(b"012", b"0123"));
    }

    fn encoded<K, Q: IntoColumns<K>>(key: &Q) -> Vec<u8> {
        let mut buf = Vec::new();
        key.encode(&mut buf);
        buf
    }

    #[test]
    fn a_key_matches_only_its_own_encoding() {
        type Key = (String, i64, Option<String>);
        let c = || Some("c".to_string());
        let key = ("ab", 7_i64, c());
        let enc = encoded::<Key, _>(&key);
        assert_eq!(
            encoded::<Key, _>(&("ab".to_string(), 7_i64, c())),
            enc,
            "every borrowed form alike"
        );
        for other in [
            ("ab", 7_i64, None),
            ("a", 7, c()),
            ("ab", 8, c()),
            ("ab", 7, Some("cd".to_string())),
        ] {
            assert_ne!(encoded::<Key, _>(&other), enc, "{other:?}");
        }
        // Moving a byte across a part boundary changes the encoding.
        let a = encoded::<(String, String), _>(&("ab", "c"));
        let b = encoded::<(String, String), _>(&("a", "bc"));
        assert_ne!(a, b);
        assert!(!a.is_empty());
        assert_ne!(encoded::<String, _>(&"ab"), a);
        // A key alone is its bare bytes; an optional one is tagged.
        assert_eq!(encoded::<String, _>(&"ab"), b"ab");
        assert_ne!(encoded::<String, _>(&"ab"), b"abc");
        let some = encoded::<Option<String>, _>(&Some("ab".to_string()));
        assert_eq!(some, b"\x01ab");
        assert_ne!(encoded::<Option<String>, _>(&None), some);
        assert_eq!(encoded::<Option<String>, _>(&None), b"\x00");
    }

    fn round_trips<K: Columns + PartialEq + std::fmt::Debug, Q: IntoColumns<K>>(key: Q) {
        let enc = encoded::<K, _>(&key);
        assert_eq!(K::decode(&enc), Some(key.to_owned_value()));
    }

    #[test]
    fn every_key_decodes_from_its_encoding() {
        round_trips::<String, _>("café");
        round_trips::<String, _>("");
        round_trips::<Vec<u8>, _>(&[0u8, 255][..]);
        round_trips::<i64, _>(-3_i64);
        round_trips::<u64, _>(u64::MAX);
        round_trips::<f64, _>(-0.5_f64);
        round_trips::<bool, _>(true);
        round_trips::<Option<String>, _>(Some("x".to_string()));
        round_trips::<Option<i64>, _>(None::<i64>);
        round_trips::<(String, i64, Option<String>), _>(("ab", 7_i64, Some("c".to_string())));
        round_trips::<(String, String), _>(("", "bc"));
        round_trips::<(bool, u64, f64, Vec<u8>), _>((false, 1_u64, 2.5_f64, &b"z"[..]));
        // Not an encoding of the type: refused, not invented.
        assert_eq!(<(String, String)>::decode(b"\x05\0\0\0ab"), None);
        assert_eq!(String::decode(&[0xff]), None);
        assert_eq!(u64::decode(b"1234567"), None);
    }
}
