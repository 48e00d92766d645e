//! Finding a plugin the way the seeds name it: `--task-modules mytasks`
//! means `libmytasks.so` (or `mytasks.so`) in the plugin path, beside the
//! binary, in the working directory or in its `target/release`. A value
//! with a directory in it, or a file that exists as given, is taken as a
//! path and nothing is searched.

use std::path::{Path, PathBuf};

use crate::plugins::PluginError;

/// The variable listing extra directories to find plugins named by their
/// name (`:`-separated, searched first).
pub const PLUGIN_PATH_VAR: &str = "FASTWORKER_PLUGIN_PATH";

/// Where a plugin given by name is looked for, in order: each directory of
/// [`PLUGIN_PATH_VAR`], the directory of the running binary, the working
/// directory, and its `target/release`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(PLUGIN_PATH_VAR)
        .map(|paths| std::env::split_paths(&paths).filter(|dir| !dir.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Some(beside) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(beside);
    }
    if let Ok(here) = std::env::current_dir() {
        dirs.push(here.join("target").join("release"));
        dirs.insert(dirs.len() - 1, here);
    }
    dirs
}

/// The file `given` names: itself when it is a path or an existing file,
/// else the first of its library file names found in `dirs`.
pub fn resolve(given: &Path, dirs: &[PathBuf]) -> Result<PathBuf, PluginError> {
    let is_path = given.components().count() > 1 || given.is_absolute();
    if is_path || given.is_file() {
        return Ok(given.to_path_buf());
    }
    let names = file_names(given);
    let looked: Vec<PathBuf> = dirs.to_vec();
    dirs.iter()
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| PluginError::NotFoundByName { name: given.display().to_string(), names, looked })
}

/// The file names a plugin called `name` may have: `libNAME.so`,
/// `NAME.so` and `NAME` itself (with `-` read as cargo writes it, `_`).
fn file_names(name: &Path) -> Vec<String> {
    let name = name.to_string_lossy();
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let mut names = Vec::new();
    for stem in [name.to_string(), name.replace('-', "_")] {
        for candidate in [format!("{prefix}{stem}{suffix}"), format!("{stem}{suffix}"), stem.clone()] {
            if !names.contains(&candidate) && !candidate.ends_with(&format!("{suffix}{suffix}")) {
                names.push(candidate);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fastworker-locate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in files {
            std::fs::write(dir.join(file), b"").unwrap();
        }
        dir
    }

    #[test]
    fn a_bare_name_is_found_as_a_library_in_the_first_directory_that_has_it() {
        let (empty, second, third) = (dir_with(&[]), dir_with(&["libmytasks.so"]), dir_with(&["libmytasks.so"]));
        let found = resolve(Path::new("mytasks"), &[empty.clone(), second.clone(), third]).unwrap();
        assert_eq!(found, second.join("libmytasks.so"));
        let dashed = dir_with(&["libmy_tasks.so"]);
        assert_eq!(
            resolve(Path::new("my-tasks"), std::slice::from_ref(&dashed)).unwrap(),
            dashed.join("libmy_tasks.so")
        );
        let plain = dir_with(&["other.so"]);
        assert_eq!(resolve(Path::new("other"), std::slice::from_ref(&plain)).unwrap(), plain.join("other.so"));
        assert_eq!(resolve(Path::new("other.so"), std::slice::from_ref(&plain)).unwrap(), plain.join("other.so"));
    }

    #[test]
    fn a_path_is_taken_as_given_and_a_missing_name_says_where_it_looked() {
        let given = Path::new("./nowhere/libx.so");
        assert_eq!(resolve(given, &[dir_with(&["libx.so"])]).unwrap(), given);
        let dir = dir_with(&[]);
        let error = resolve(Path::new("mytasks"), std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(error.contains("libmytasks.so") && error.contains(&dir.display().to_string()), "{error}");
        assert!(error.contains(PLUGIN_PATH_VAR), "{error}");
    }
}
