//! Job projects: `wmr new` scaffolds one in Rust, Python or JavaScript, and
//! `wmr build` turns one into a component with the language's own tool
//! (cargo, componentize-py, componentize-js).
//!
//! The SDKs and the WIT world are compiled into this binary, so a project
//! needs nothing from this repository: a Rust project gets the SDK as a
//! path dependency written beside it, and Python and JavaScript jobs are
//! built in a staging directory that holds the job's files and the SDK.
//! Checking the component against the world is the caller's (the runtime's)
//! part.

mod sdk;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The languages a job can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the wmr-sdk crate, built by cargo for wasm32-wasip2.
    Rust,
    /// Python, with the `wmr` package, built by componentize-py.
    Python,
    /// JavaScript, with `wmr.js`, built by componentize-js.
    Js,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }
}

/// What went wrong making or building a project.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// `wmr new` into a directory that already has files.
    #[error("{0} already exists and is not empty; choose a new name or remove it")]
    Exists(PathBuf),
    /// A name that can't be a directory, crate or module name.
    #[error("{0:?} is not a usable job name: use letters, digits, '-' and '_', starting with a letter")]
    BadName(String),
    /// Nothing to build where the user pointed.
    #[error(
        "{0} holds no job: expected Cargo.toml, job.py or job.js there (make one with `wmr new NAME --lang rust|python|js`)"
    )]
    NoJob(PathBuf),
    /// A file that is not a job source.
    #[error("{0} is not a job source: give a directory, or a .py or .js file")]
    UnknownSource(PathBuf),
    /// The language's build tool is not installed.
    #[error("{tool}, which builds {lang} jobs, was not found (looked in {looked}); {install}")]
    MissingTool {
        /// The tool.
        tool: &'static str,
        /// The language.
        lang: &'static str,
        /// Where it was looked for.
        looked: String,
        /// How to install it.
        install: String,
    },
    /// The build tool ran and failed.
    #[error("{tool} failed building {source_path}:\n{output}")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// The job source.
        source_path: PathBuf,
        /// The end of what it printed.
        output: String,
    },
    /// A directory with more sources than any job has.
    #[error(
        "the job's sources under {} come to more than {limit_mib} MiB; build a directory holding only the job, or name its file",
        dir.display()
    )]
    TooBig {
        /// The directory.
        dir: PathBuf,
        /// The limit.
        limit_mib: u64,
    },
    /// Reading or writing files.
    #[error("{doing} {}: {source}", path.display())]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProjectError {
    let path = path.to_path_buf();
    move |source| ProjectError::Io { doing, path, source }
}

/// Write `contents` to `dir/rel`, making directories as needed.
fn write(dir: &Path, rel: &str, contents: &str) -> Result<(), ProjectError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    std::fs::write(&path, contents).map_err(io("writing", &path))
}

/// Scaffold a word-count job named after `dir`'s last component in `lang`,
/// ready to build and run as it is. Returns the files written.
///
/// # Errors
/// If `dir` exists with files in it, its name is unusable, or writing fails.
pub fn scaffold(dir: &Path, lang: Lang) -> Result<Vec<PathBuf>, ProjectError> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let usable = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !usable {
        return Err(ProjectError::BadName(name));
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io("reading", dir))?;
        if entries.next().is_some() {
            return Err(ProjectError::Exists(dir.to_path_buf()));
        }
    }
    let files: Vec<(String, String)> = match lang {
        Lang::Rust => {
            let mut files = vec![
                ("Cargo.toml".to_string(), sdk::RUST_CARGO_TOML.replace("{name}", &name)),
                ("src/lib.rs".to_string(), sdk::RUST_JOB.to_string()),
                (".gitignore".to_string(), "/target\n*.wasm\n".to_string()),
            ];
            files.extend(
                sdk::RUST_SDK
                    .iter()
                    .map(|(rel, text)| (format!("wmr-sdk/{rel}"), (*text).to_string())),
            );
            files
        }
        Lang::Python => vec![
            ("job.py".to_string(), sdk::PYTHON_JOB.to_string()),
            (".gitignore".to_string(), "*.wasm\n.venv/\n__pycache__/\n".to_string()),
        ],
        Lang::Js => vec![
            ("job.js".to_string(), sdk::JS_JOB.to_string()),
            ("package.json".to_string(), sdk::JS_PACKAGE.replace("{name}", &name)),
            (".gitignore".to_string(), "*.wasm\nnode_modules/\n".to_string()),
        ],
    };
    let mut written = Vec::new();
    for (rel, text) in files {
        write(dir, &rel, &text)?;
        written.push(dir.join(rel));
    }
    Ok(written)
}

/// The most a job's own sources may take, copied for a build.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

/// A job source found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its language.
    pub lang: Lang,
    /// The project directory.
    pub dir: PathBuf,
    /// The entry file (`Cargo.toml`, `job.py`, `job.js`, or the file given).
    pub entry: PathBuf,
    /// The default name of the built component, without `.wasm`.
    pub name: String,
    /// Whether the user gave the entry file itself: then it alone is built,
    /// not the directory around it.
    pub single_file: bool,
}

impl Source {
    /// The job at `path`: a directory holding `Cargo.toml`, `job.py` or
    /// `job.js` (in that order), or a `.py` or `.js` file.
    ///
    /// # Errors
    /// If there is no job there.
    pub fn find(path: &Path) -> Result<Source, ProjectError> {
        let path = std::path::absolute(path).map_err(io("resolving", path))?;
        let stem = |p: &Path| p.file_stem().and_then(|s| s.to_str()).unwrap_or("job").to_string();
        if path.is_dir() {
            let name = stem(&path);
            for (file, lang) in [
                ("Cargo.toml", Lang::Rust),
                ("job.py", Lang::Python),
                ("job.js", Lang::Js),
            ] {
                let entry = path.join(file);
                if entry.is_file() {
                    return Ok(Source {
                        lang,
                        dir: path.clone(),
                        entry,
                        name: name.clone(),
                        single_file: false,
                    });
                }
            }
            return Err(ProjectError::NoJob(path));
        }
        let lang = match path.extension().and_then(|e| e.to_str()) {
            Some("py") => Lang::Python,
            Some("js" | "mjs") => Lang::Js,
            _ => return Err(ProjectError::UnknownSource(path)),
        };
        if !path.is_file() {
            return Err(ProjectError::NoJob(path));
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Source {
            lang,
            name: stem(&path),
            dir,
            entry: path,
            single_file: true,
        })
    }
}

/// The component `source` builds to, as bytes. Build tools are looked for
/// in the project's own environment (`.venv`, `node_modules`), then `PATH`.
///
/// # Errors
/// A missing tool (with how to install it), or the tool's own failure.
pub fn build(source: &Source) -> Result<Vec<u8>, ProjectError> {
    match source.lang {
        Lang::Rust => build_rust(source),
        Lang::Python => build_python(source),
        Lang::Js => build_js(source),
    }
}

/// `program` on `PATH`, if there.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The tool: first in the project's own environment, then on `PATH`.
fn find_tool(
    source: &Source,
    tool: &'static str,
    local: &str,
    install: impl FnOnce() -> String,
) -> Result<PathBuf, ProjectError> {
    let own = source.dir.join(local);
    if own.is_file() {
        return Ok(own);
    }
    on_path(tool).ok_or_else(|| ProjectError::MissingTool {
        tool,
        lang: source.lang.name(),
        looked: format!("{} and PATH", own.display()),
        install: install(),
    })
}

/// Run a build tool, keeping the end of what it prints for its failure.
fn run_tool(tool: &str, source: &Source, cmd: &mut Command) -> Result<(), ProjectError> {
    let out = cmd.output().map_err(io("running", Path::new(tool)))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    Err(ProjectError::ToolFailed {
        tool: tool.to_string(),
        source_path: source.entry.clone(),
        output: tail,
    })
}

/// A fresh directory holding the SDK files `files` and the WIT world.
fn staging(files: &[(&str, &str)]) -> Result<tempfile::TempDir, ProjectError> {
    let dir = tempfile::Builder::new()
        .prefix("wmr-build-")
        .tempdir()
        .map_err(io("creating a staging directory in", &std::env::temp_dir()))?;
    for (rel, text) in files {
        write(dir.path(), rel, text)?;
    }
    write(dir.path(), "wit/job.wit", sdk::WIT)?;
    Ok(dir)
}

fn read_output(path: &Path) -> Result<Vec<u8>, ProjectError> {
    std::fs::read(path).map_err(io("reading the built component", path))
}

fn build_python(source: &Source) -> Result<Vec<u8>, ProjectError> {
    let tool = find_tool(source, "componentize-py", ".venv/bin/componentize-py", || {
        format!(
            "install it with `python3 -m venv {dir}/.venv && {dir}/.venv/bin/pip install componentize-py=={}`, \
             or `pip install componentize-py=={}` into an environment on PATH",
            sdk::COMPONENTIZE_PY,
            sdk::COMPONENTIZE_PY,
            dir = source.dir.display()
        )
    })?;
    let stage = staging(sdk::PYTHON_SDK)?;
    // The job's modules are copied beside the SDK, so that the build leaves
    // nothing (such as __pycache__) in the project.
    let app = stage.path().join("app");
    copy_sources(source, &app, &["py"])?;
    let module = source
        .entry
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("job")
        .to_string();
    let out = stage.path().join("job.wasm");
    run_tool(
        "componentize-py",
        source,
        Command::new(&tool)
            .arg("-d")
            .arg(stage.path().join("wit"))
            .args(["-w", "job", "componentize", "-p"])
            .arg(stage.path().join("python"))
            .arg("-p")
            .arg(&app)
            .arg(&module)
            .arg("-o")
            .arg(&out)
            // The job's own imports from a venv are not wanted: only its
            // directory and the SDK.
            .env_remove("VIRTUAL_ENV")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )?;
    read_output(&out)
}

fn build_js(source: &Source) -> Result<Vec<u8>, ProjectError> {
    let tool = find_tool(source, "componentize-js", "node_modules/.bin/componentize-js", || {
        format!(
            "install it with `npm install --save-dev @bytecodealliance/componentize-js@{}` in {}",
            sdk::COMPONENTIZE_JS,
            source.dir.display()
        )
    })?;
    let stage = staging(sdk::JS_SDK)?;
    // The job's own modules beside the SDK, so `./wmr.js` resolves to it.
    let job_dir = stage.path().join("js");
    copy_sources(source, &job_dir, &["js", "mjs"])?;
    let module = source
        .entry
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("job.js")
        .to_string();
    // A JSON string is a JavaScript string literal, whatever the file's name.
    let specifier = serde_json::Value::String(format!("./{module}")).to_string();
    write(&job_dir, "wmr-entry.js", &sdk::JS_ENTRY.replace("{module}", &specifier))?;
    let out = stage.path().join("job.wasm");
    run_tool(
        "componentize-js",
        source,
        Command::new(&tool)
            .arg(job_dir.join("wmr-entry.js"))
            .arg("--wit")
            .arg(stage.path().join("wit"))
            .args(["--world-name", "job", "--disable", "http", "fetch-event", "-o"])
            .arg(&out),
    )?;
    read_output(&out)
}

/// Copy the job's sources into `to`: the entry file alone when the user
/// named it, else the files ending in `extensions` under its directory,
/// leaving out symlinks, virtual environments, `node_modules`,
/// `__pycache__` and hidden directories, and at most
/// [`MAX_SOURCE_BYTES`]. Files already in `to` (the SDK's own) are kept.
fn copy_sources(source: &Source, to: &Path, extensions: &[&str]) -> Result<(), ProjectError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    if source.single_file {
        let name = source.entry.file_name().unwrap_or_default();
        return std::fs::copy(&source.entry, to.join(name))
            .map(|_| ())
            .map_err(io("copying", &source.entry));
    }
    let mut budget = MAX_SOURCE_BYTES;
    copy_tree(&source.dir, to, extensions, &mut budget)
}

fn copy_tree(from: &Path, to: &Path, extensions: &[&str], budget: &mut u64) -> Result<(), ProjectError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The entry's own type: a symlink is not followed.
        let kind = entry.file_type().map_err(io("reading", &path))?;
        if name.starts_with('.') || name == "node_modules" || name == "__pycache__" || kind.is_symlink() {
            continue;
        }
        let target = to.join(&*name);
        if kind.is_dir() {
            if !path.join("pyvenv.cfg").exists() {
                copy_tree(&path, &target, extensions, budget)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
            && !target.exists()
        {
            let len = entry.metadata().map_err(io("reading", &path))?.len();
            *budget = budget.checked_sub(len).ok_or_else(|| ProjectError::TooBig {
                dir: from.to_path_buf(),
                limit_mib: MAX_SOURCE_BYTES >> 20,
            })?;
            std::fs::copy(&path, &target).map_err(io("copying", &path))?;
        }
    }
    Ok(())
}

fn build_rust(source: &Source) -> Result<Vec<u8>, ProjectError> {
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    if on_path("cargo").is_none() && !cargo.is_file() {
        return Err(ProjectError::MissingTool {
            tool: "cargo",
            lang: "Rust",
            looked: "PATH".into(),
            install: "install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`".into(),
        });
    }
    if let Some(rustup) = on_path("rustup") {
        let installed = Command::new(rustup).args(["target", "list", "--installed"]).output();
        if installed.is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
        {
            return Err(ProjectError::MissingTool {
                tool: "the wasm32-wasip2 target",
                lang: "Rust",
                looked: "rustup's installed targets".into(),
                install: "install it with `rustup target add wasm32-wasip2`".into(),
            });
        }
    }
    let manifest = source.dir.join("Cargo.toml");
    run_tool(
        "cargo build",
        source,
        Command::new(&cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(&manifest),
    )?;
    let metadata = Command::new(&cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(io("running cargo metadata for", &manifest))?;
    let tool_failed = |output: String| ProjectError::ToolFailed {
        tool: "cargo metadata".into(),
        source_path: manifest.clone(),
        output,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).map_err(|e| tool_failed(format!("unreadable output: {e}")))?;
    let target_dir = json["target_directory"]
        .as_str()
        .ok_or_else(|| tool_failed("no target_directory".into()))?;
    let lib = json["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            // Cargo reports canonical paths; the user's may hold `..` or symlinks.
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| Path::new(m).canonicalize().ok() == manifest.canonicalize().ok())
        })
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .ok_or_else(|| {
            tool_failed("the package has no cdylib library: add `[lib] crate-type = [\"cdylib\"]`".into())
        })?;
    let built = Path::new(target_dir)
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", lib.replace('-', "_")));
    read_output(&built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_found_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("wc");
        std::fs::create_dir(&job).unwrap();
        let e = Source::find(&job).unwrap_err();
        assert!(e.to_string().contains("expected Cargo.toml, job.py or job.js"), "{e}");
        std::fs::write(job.join("job.py"), "").unwrap();
        let found = Source::find(&job).unwrap();
        assert_eq!((found.lang, found.name.as_str()), (Lang::Python, "wc"));
        let file = Source::find(&job.join("job.py")).unwrap();
        assert_eq!((file.lang, file.name.as_str()), (Lang::Python, "job"));
        let e = Source::find(&job.join("notes.txt")).unwrap_err();
        assert!(e.to_string().contains("is not a job source"), "{e}");
    }

    #[test]
    fn scaffolding_refuses_bad_names_and_busy_directories() {
        let dir = tempfile::tempdir().unwrap();
        let e = scaffold(&dir.path().join("9lives"), Lang::Python).unwrap_err();
        assert!(matches!(e, ProjectError::BadName(_)), "{e}");
        let job = dir.path().join("wc");
        let files = scaffold(&job, Lang::Js).unwrap();
        assert!(files.iter().any(|f| f.ends_with("job.js")), "{files:?}");
        let e = scaffold(&job, Lang::Js).unwrap_err();
        assert!(e.to_string().contains("already exists and is not empty"), "{e}");
        let rust = dir.path().join("rs");
        scaffold(&rust, Lang::Rust).unwrap();
        let manifest = std::fs::read_to_string(rust.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"rs\""), "{manifest}");
        assert!(rust.join("wmr-sdk/src/lib.rs").is_file());
        assert!(rust.join("wmr-sdk/wit/job.wit").is_file());
    }

    #[test]
    fn sources_are_copied_without_symlinks_venvs_or_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        std::fs::create_dir_all(job.join("lib")).unwrap();
        std::fs::create_dir_all(job.join("venv")).unwrap();
        std::fs::write(job.join("job.py"), "import lib.helper").unwrap();
        std::fs::write(job.join("lib/helper.py"), "").unwrap();
        std::fs::write(job.join("notes.txt"), "").unwrap();
        std::fs::write(job.join("venv/pyvenv.cfg"), "").unwrap();
        std::fs::write(job.join("venv/site.py"), "").unwrap();
        std::os::unix::fs::symlink(dir.path(), job.join("loop")).unwrap();
        std::fs::write(dir.path().join("neighbour.py"), "").unwrap();
        let listed = |root: &Path| {
            let mut files: Vec<String> = walk(root)
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect();
            files.sort();
            files
        };
        let out = dir.path().join("out-dir");
        copy_sources(&Source::find(&job).unwrap(), &out, &["py"]).unwrap();
        assert_eq!(listed(&out), ["job.py", "lib/helper.py"]);
        let out = dir.path().join("out-file");
        copy_sources(&Source::find(&job.join("job.py")).unwrap(), &out, &["py"]).unwrap();
        assert_eq!(listed(&out), ["job.py"]);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    /// `wmr new` writes the Rust SDK from copies built into the binary:
    /// every source file of `sdk/` must be among them.
    #[test]
    fn the_rust_sdk_built_in_has_every_file_of_sdk() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        let mut on_disk: Vec<String> = ["src", "wit"]
            .iter()
            .flat_map(|d| walk(&sdk.join(d)))
            .map(|p| p.strip_prefix(&sdk).unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.push("Cargo.toml".into());
        on_disk.sort();
        let mut built_in: Vec<String> = sdk::RUST_SDK.iter().map(|(path, _)| path.to_string()).collect();
        built_in.sort();
        assert_eq!(built_in, on_disk);
    }

    #[test]
    fn a_missing_tool_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job.js"), "").unwrap();
        let source = Source::find(dir.path()).unwrap();
        let e = find_tool(&source, "no-such-tool-wmr", "node_modules/.bin/x", || {
            "install it so".into()
        })
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("no-such-tool-wmr, which builds JavaScript jobs, was not found"),
            "{text}"
        );
        assert!(text.contains("install it so"), "{text}");
    }
}
