//! The SDKs, the WIT world and the scaffolds' templates, compiled into the
//! binary so that `wmr new` and `wmr build` work anywhere.

/// The WIT world every job implements.
pub(super) const WIT: &str = include_str!("../../../sdk/wit/job.wit");

/// The componentize-py version the Python SDK is built and tested with.
pub(super) const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js version the JavaScript SDK is built and tested with.
pub(super) const COMPONENTIZE_JS: &str = "0.23.0";

/// The Python SDK's files, under the staging directory.
pub(super) const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "python/wmr/__init__.py",
        include_str!("../../../sdk/python/wmr/__init__.py"),
    ),
    (
        "python/wmr/_alphabet.py",
        include_str!("../../../sdk/python/wmr/_alphabet.py"),
    ),
    (
        "python/wmr/_columns.py",
        include_str!("../../../sdk/python/wmr/_columns.py"),
    ),
    (
        "python/wmr/_export.py",
        include_str!("../../../sdk/python/wmr/_export.py"),
    ),
    ("python/wmr/_host.py", include_str!("../../../sdk/python/wmr/_host.py")),
    ("python/wmr/_job.py", include_str!("../../../sdk/python/wmr/_job.py")),
    ("python/wmr/_text.py", include_str!("../../../sdk/python/wmr/_text.py")),
];

/// The JavaScript SDK's files, beside the job's own in the staging directory.
pub(super) const JS_SDK: &[(&str, &str)] = &[
    ("js/wmr.js", include_str!("../../../sdk/js/wmr.js")),
    ("js/alphabet.js", include_str!("../../../sdk/js/alphabet.js")),
];

/// The module componentize-js builds: the job's default export, exported
/// as the world's functions. `{module}` is the job's file, as a string literal.
pub(super) const JS_ENTRY: &str = "import Job from {module};
import { exportJob } from \"./wmr.js\";
export const { configure, map, flush, combine, reduce } = exportJob(Job);
";

/// The Rust SDK's files, written into a Rust project as `wmr-sdk/`.
pub(super) const RUST_SDK: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    ("src/columnar.rs", include_str!("../../../sdk/src/columnar.rs")),
    ("src/columns.rs", include_str!("../../../sdk/src/columns.rs")),
    ("src/combiner.rs", include_str!("../../../sdk/src/combiner.rs")),
    (
        "src/combiner/table.rs",
        include_str!("../../../sdk/src/combiner/table.rs"),
    ),
    ("src/emit.rs", include_str!("../../../sdk/src/emit.rs")),
    ("src/values.rs", include_str!("../../../sdk/src/values.rs")),
    ("src/glue.rs", include_str!("../../../sdk/src/glue.rs")),
    ("src/record.rs", include_str!("../../../sdk/src/record.rs")),
    ("src/text.rs", include_str!("../../../sdk/src/text.rs")),
    ("wit/job.wit", include_str!("../../../sdk/wit/job.wit")),
];

/// A Rust project's manifest; `{name}` is the job's name.
pub(super) const RUST_CARGO_TOML: &str = "[package]
name = \"{name}\"
version = \"0.1.0\"
edition = \"2024\"
publish = false

[lib]
crate-type = [\"cdylib\"]

[dependencies]
wmr-sdk = { path = \"wmr-sdk\" }

# A project of its own, not part of any workspace around it.
[workspace]
members = [\".\", \"wmr-sdk\"]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = \"abort\"
strip = \"debuginfo\"
";

/// The Rust scaffold's job.
pub(super) const RUST_JOB: &str = include_str!("../../../guest-examples/wordcount/src/lib.rs");
/// The Python scaffold's job.
pub(super) const PYTHON_JOB: &str = include_str!("../../../guest-examples/python/wordcount/job.py");
/// The JavaScript scaffold's job.
pub(super) const JS_JOB: &str = include_str!("../../../guest-examples/js/wordcount/job.js");
/// The JavaScript scaffold's package.json; `{name}` is the job's name.
pub(super) const JS_PACKAGE: &str = "{
  \"name\": \"{name}\",
  \"version\": \"0.1.0\",
  \"private\": true,
  \"type\": \"module\",
  \"scripts\": { \"build\": \"wmr build\" },
  \"devDependencies\": { \"@bytecodealliance/componentize-js\": \"0.23.0\" }
}
";
