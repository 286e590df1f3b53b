//! # wmr-sdk: write wmr MapReduce jobs in plain Rust
//!
//! A job is a type implementing [`Job`], exported with [`export_job!`], and
//! compiled for `wasm32-wasip2` into one component that `wmr run` executes:
//!
//! ```ignore
//! use wmr_sdk::{Emit, Job, Output, Record, Values};
//!
//! #[derive(Default)]
//! struct WordCount;
//!
//! impl Job for WordCount {
//!     type Key = String;
//!     type Value = u64;
//!     type Output = (String, u64);
//!     const COMBINES: bool = true;
//!
//!     fn map(&self, line: &Record, out: &mut Emit<String, u64>) {
//!         for word in wmr_sdk::text::words(line.line()) { out.emit(word, 1) }
//!     }
//!     fn combine(&self, _word: &String, counts: Values<u64>) -> u64 { counts.sum() }
//!     fn reduce(&self, word: String, counts: Values<u64>, out: &mut Output<(String, u64)>) {
//!         out.push((word, counts.sum()))
//!     }
//! }
//! wmr_sdk::export_job!(WordCount);
//! ```
//!
//! Keys, values and output rows are [`Columns`]: `String`, `Vec<u8>`, `i64`,
//! `u64`, `f64`, `bool`, `Option`s of them, and tuples of up to four of them.
//! Under the hood every call is one batch of thousands of records in Arrow's
//! columnar layout; see `wit/job.wit` for the interface other languages use.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "job",
        pub_export_macro: true,
        export_macro_name: "__export_wmr_job",
        default_bindings_module: "wmr_sdk::bindings",
    });
}

mod columns;
mod emit;
mod glue;
mod record;
pub mod text;

pub use columns::{Columns, Field, IntoColumns};
pub use emit::{Emit, Output, Values};
pub use glue::{count, log, LogLevel};
pub use record::{Params, Record};

#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{combine, configure, flush, map, reduce, ConfigureFn};
    pub use crate::bindings::{Guest, __export_wmr_job};
    pub use crate::bindings::wmr::job::types::{Batch, GuestError, Grouped, JobInfo};
}

/// A MapReduce job.
///
/// `map` is called once per input record, `reduce` once per distinct key with
/// all of that key's values, in ascending key order within a reduce task.
/// Set [`Job::COMBINES`] and implement [`Job::combine`] to pre-aggregate on
/// the map side; the engine may call it any number of times on any subset of
/// a key's values, so it must be associative and commutative, like a sum.
pub trait Job: 'static {
    /// The key map emits and reduce groups by.
    type Key: Columns;
    /// The value map emits for each key.
    type Value: Columns;
    /// One row of the job's output.
    type Output: Columns;

    /// Whether [`Job::combine`] is implemented and should be used.
    const COMBINES: bool = false;

    /// The job's name, shown by the engine. Defaults to the type's name.
    fn name(&self) -> String {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full).to_string()
    }

    /// The output column names. Defaults to `key`, `value`, `value2`, ...
    fn output_names(&self) -> Vec<String> {
        let n = Self::Output::data_types().len();
        (0..n)
            .map(|i| match i {
                0 if n > 1 => "key".to_string(),
                0 | 1 => "value".to_string(),
                i => format!("value{i}"),
            })
            .collect()
    }

    /// Map one input record to any number of key/value pairs.
    fn map(&self, record: &Record<'_>, out: &mut Emit<Self::Key, Self::Value>);

    /// Combine some of one key's values into one value; only called when
    /// [`Job::COMBINES`] is true.
    fn combine(&self, key: &Self::Key, values: Values<'_, Self::Value>) -> Self::Value {
        let _ = (key, values);
        panic!("{}: combine was called but the job does not set COMBINES = true", self.name())
    }

    /// Reduce all values of one key to output rows.
    fn reduce(&self, key: Self::Key, values: Values<'_, Self::Value>, out: &mut Output<Self::Output>);
}

/// Export a [`Job`] as the component's entry points.
///
/// `export_job!(MyJob)` builds the job with `Default`; `export_job!(MyJob,
/// MyJob::from_params)` builds it with a `fn(&Params) -> Result<MyJob, String>`,
/// whose error rejects the job at submit with that message.
#[macro_export]
macro_rules! export_job {
    ($job:ty) => {
        $crate::export_job!($job, |_: &$crate::Params| -> ::core::result::Result<$job, ::std::string::String> {
            ::core::result::Result::Ok(<$job as ::core::default::Default>::default())
        });
    };
    ($job:ty, $configure:expr) => {
        struct __WmrGuest;
        impl $crate::__private::Guest for __WmrGuest {
            fn configure(
                params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::__private::JobInfo, ::std::string::String> {
                $crate::__private::configure::<$job>(params, $configure)
            }
            fn map(source: ::std::string::String, input: $crate::__private::Batch) -> ::core::result::Result<$crate::__private::Batch, $crate::__private::GuestError> {
                $crate::__private::map::<$job>(source, input)
            }
            fn flush() -> ::core::result::Result<$crate::__private::Batch, $crate::__private::GuestError> {
                $crate::__private::flush::<$job>()
            }
            fn combine(input: $crate::__private::Grouped) -> ::core::result::Result<$crate::__private::Batch, $crate::__private::GuestError> {
                $crate::__private::combine::<$job>(input)
            }
            fn reduce(input: $crate::__private::Grouped) -> ::core::result::Result<$crate::__private::Batch, $crate::__private::GuestError> {
                $crate::__private::reduce::<$job>(input)
            }
        }
        $crate::__private::__export_wmr_job!(__WmrGuest with_types_in $crate::bindings);
    };
}
