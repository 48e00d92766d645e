//! The house stays as `docs/architecture.md` draws it by rule, not by care:
//! this test reads every `crate::…` path in the library's sources and fails
//! on an import that runs back up the layers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each top-level module of the library may import from the crate
/// (besides itself), as `docs/architecture.md`'s table says. A path with a
/// `::` names the only sub-modules of that module it may reach.
const ALLOWED: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("plugins", &["wire"]),
    ("workflow", &["wire"]),
    ("client", &["wire", "workflow"]),
    ("cluster", &["wire", "client"]),
    ("ledger", &["wire", "cluster::routing", "cluster::task_limits"]),
    ("server", &["wire", "plugins", "workflow", "cluster", "ledger"]),
    ("dashboard", &["wire", "plugins", "cluster", "workflow", "server"]),
    ("control_plane", &["wire", "plugins", "client", "cluster", "ledger", "workflow", "server", "dashboard"]),
    ("subworker_process", &["wire", "plugins", "client", "cluster", "server", "control_plane"]),
];

/// The pure parts of `cluster/`: bookkeeping with no I/O, which the ledger
/// builds on, import nothing of the crate but `wire` and each other.
const PURE_CLUSTER: &[&str] = &["routing", "worker", "waiting", "status", "task_limits"];

fn library_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    // `main.rs` and `cli/` are the binary, over the library's public API.
    files.retain(|path| {
        let relative = path.strip_prefix(&src).expect("under src");
        relative != Path::new("main.rs") && relative != Path::new("lib.rs") && !relative.starts_with("cli")
    });
    files.sort();
    files
}

/// The top-level module a file belongs to (`server` for `server/state/mod.rs`,
/// `control_plane` for `control_plane.rs`) and, inside it, its first folder or file.
fn module_of(path: &Path) -> (String, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let relative = path.strip_prefix(&src).expect("under src");
    let mut parts = relative.iter().map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string());
    let top = parts.next().expect("a file");
    let inner = parts.next().unwrap_or_default();
    (top, inner)
}

/// Every `crate::a::b` path in the code (comments and doc comments left out),
/// as `(a, b, line number)`; `b` is empty for `crate::a` alone.
fn crate_paths(text: &str) -> Vec<(String, String, usize)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let word = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
            let first = word(after);
            let second = after[first.len()..].strip_prefix("::").map(word).unwrap_or_default();
            found.push((first, second, index + 1));
            rest = after;
        }
    }
    found
}

#[test]
fn no_import_runs_back_up_the_layers() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let files = library_sources();
    assert!(files.len() > 50, "found only {} library sources: is the path right?", files.len());
    let mut wrong = Vec::new();
    for path in &files {
        let (top, inner) = module_of(path);
        let Some(may) = allowed.get(top.as_str()) else {
            wrong.push(format!(
                "{}: module '{top}' is in no layer of this test (add it to ALLOWED and docs/architecture.md)",
                path.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("reading a source file");
        for (first, second, line) in crate_paths(&text) {
            if first == top {
                let pure = top == "cluster" && PURE_CLUSTER.contains(&inner.as_str());
                if pure && !PURE_CLUSTER.contains(&second.as_str()) {
                    wrong.push(format!("{}:{line}: the pure cluster file imports cluster::{second}", path.display()));
                }
                continue;
            }
            if first.starts_with(|c: char| c.is_uppercase()) {
                wrong.push(format!(
                    "{}:{line}: imports the re-export crate::{first}; name its module instead",
                    path.display()
                ));
                continue;
            }
            let pure_cluster = top == "cluster" && PURE_CLUSTER.contains(&inner.as_str());
            let fits = !pure_cluster
                && may.iter().any(|rule| match rule.split_once("::") {
                    Some((module, sub)) => module == first && sub == second,
                    None => *rule == first,
                })
                || pure_cluster && first == "wire";
            if !fits {
                wrong.push(format!(
                    "{}:{line}: '{top}' imports crate::{first}::{second}, which is not below it",
                    path.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run back up the layers of docs/architecture.md:\n{}", wrong.join("\n"));
}

#[test]
fn the_scan_sees_an_import_that_runs_back_up() {
    // The scanner itself: a wire file that imported the server would be caught.
    let paths = crate_paths("use crate::server::state::State; // crate::ledger in a comment\n/// crate::client\n");
    assert_eq!(paths, vec![("server".to_string(), "state".to_string(), 1)]);
}
