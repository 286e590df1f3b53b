//! Build-time code: Rust for `proto/wmr.proto` (compiled with protox, so no
//! `protoc` is needed), and the list of example guests as the
//! `foreach_example!` macro the end-to-end tests use to make sure every guest
//! has tests.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it compiles: a build
    // script compiled for one checkout may be run for another (a shared
    // target directory).
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    compile_proto(&manifest_dir)?;
    list_examples(&manifest_dir);
    Ok(())
}

fn compile_proto(manifest_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = manifest_dir.join("../proto");
    let proto = proto_dir.join("wmr.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set also feeds gRPC reflection.
    std::fs::write(
        out.join("wmr_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

fn list_examples(manifest_dir: &Path) {
    let examples = manifest_dir.join("../guest-examples");
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
    // Python and JavaScript examples, as `py_NAME` and `js_NAME`.
    for (lang, prefix) in [("python", "py"), ("js", "js")] {
        let dir = examples.join(lang);
        println!("cargo:rerun-if-changed={}", dir.display());
        names.extend(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(|n| format!("{prefix}_{n}"))),
        );
    }
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
