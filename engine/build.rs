//! Build-time code: the list of example guests, as the `foreach_example!`
//! macro the end-to-end tests use to make sure every guest has tests.

use std::path::Path;

fn main() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-examples");
    println!("cargo:rerun-if-changed={}", examples.display());
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let calls: String = names.iter().map(|n| format!("        $mac!({n});\n")).collect();
    let code = format!(
        "/// Invoke `$mac!(name)` for every guest in `guest-examples/`.\n\
         #[allow(unused_macros, reason = \"not every test binary uses it\")]\n\
         macro_rules! foreach_example {{\n    ($mac:ident) => {{\n{calls}    }};\n}}\n"
    );
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guest_examples.rs");
    std::fs::write(out, code).expect("writing guest_examples.rs");
}
