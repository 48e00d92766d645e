//! Loading task plugins and finding their tasks by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use fastworker_plugin_sdk::abi::{PluginRef, TaskDecl};
use fastworker_plugin_sdk::SDK_VERSION;

use crate::schedules::{Schedule, ScheduleError};

/// A loaded plugin file.
#[derive(Debug)]
pub struct PluginInfo {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Its package name.
    pub name: String,
    /// Its package version.
    pub version: String,
}

/// A task and the plugin that declares it.
#[derive(Clone)]
pub struct LoadedTask {
    /// The declaration, including the function to call.
    pub decl: TaskDecl,
    /// Where it came from.
    pub plugin: Arc<PluginInfo>,
}

/// Every task of every loaded plugin, by name.
#[derive(Default)]
pub struct Registry {
    tasks: HashMap<String, LoadedTask>,
    plugins: Vec<Arc<PluginInfo>>,
    schedules: Vec<Schedule>,
}

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is not there.
    #[error(
        "plugin {path}: no such file; build it with `cargo build` and pass the path of the .so/.dylib/.dll it produces"
    )]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file could not be opened as a shared library.
    #[error("plugin {path}: not a loadable shared library ({reason}); pass the cdylib a plugin crate builds")]
    NotALibrary {
        /// The path given.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A shared library without a fastworker root module.
    #[error("plugin {path}: a shared library, but not a fastworker plugin (it exports no plugin root module); add `fastworker_plugin_sdk::export_plugin!(...)` to the crate")]
    NotAPlugin {
        /// The path given.
        path: PathBuf,
    },
    /// Built against an SDK this host cannot load.
    #[error("plugin {path}: built against fastworker-plugin-sdk {plugin_sdk}, but this host uses {host_sdk}; rebuild the plugin against fastworker-plugin-sdk {host_sdk}")]
    IncompatibleSdk {
        /// The path given.
        path: PathBuf,
        /// The SDK version the plugin was built with.
        plugin_sdk: String,
        /// The SDK version of this host.
        host_sdk: &'static str,
    },
    /// The layout of the plugin's types differs from the host's.
    #[error("plugin {path}: its ABI does not match this host's fastworker-plugin-sdk {host_sdk} ({detail}); rebuild the plugin against this SDK")]
    IncompatibleAbi {
        /// The path given.
        path: PathBuf,
        /// The host's SDK version.
        host_sdk: &'static str,
        /// abi_stable's account of the difference.
        detail: String,
    },
    /// A periodic task's schedule does not parse.
    #[error("plugin {path}: {source}; fix the task's `every`/`cron` declaration and rebuild the plugin")]
    BadSchedule {
        /// The path given.
        path: PathBuf,
        /// The task, the schedule and what is wrong.
        source: ScheduleError,
    },
    /// Two plugins declare the same task.
    #[error("task '{task}' is declared by both {first} and {second}; task names must be unique across --task-modules, so rename one or load only one of the plugins")]
    DuplicateTask {
        /// The task name.
        task: String,
        /// The plugin loaded first.
        first: PathBuf,
        /// The plugin that declared it again.
        second: PathBuf,
    },
}

impl Registry {
    /// Loads every plugin in `paths`, refusing the whole set at the first
    /// problem so that a process never starts with fewer tasks than asked for.
    pub fn load(paths: &[PathBuf]) -> Result<Registry, PluginError> {
        let mut registry = Registry::default();
        for path in paths {
            let (info, plugin) = load_plugin(path)?;
            let info = Arc::new(info);
            for decl in plugin.tasks().as_slice() {
                let name = decl.name.as_str().to_string();
                if let Some(existing) = registry.tasks.get(&name) {
                    return Err(PluginError::DuplicateTask {
                        task: name,
                        first: existing.plugin.path.clone(),
                        second: path.clone(),
                    });
                }
                let declared = decl.options.schedule.as_str();
                if !declared.is_empty() {
                    let schedule = Schedule::parse(&name, declared)
                        .map_err(|source| PluginError::BadSchedule { path: path.clone(), source })?;
                    registry.schedules.push(schedule);
                }
                registry.tasks.insert(name, LoadedTask { decl: *decl, plugin: info.clone() });
            }
            registry.plugins.push(info);
        }
        Ok(registry)
    }

    /// The schedules of the periodic tasks, checked at load.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// The task called `name`.
    pub fn get(&self, name: &str) -> Option<&LoadedTask> {
        self.tasks.get(name)
    }

    /// All tasks, sorted by name.
    pub fn tasks(&self) -> Vec<&LoadedTask> {
        let mut tasks: Vec<_> = self.tasks.values().collect();
        tasks.sort_by(|a, b| a.decl.name.as_str().cmp(b.decl.name.as_str()));
        tasks
    }

    /// The loaded plugins, in load order.
    pub fn plugins(&self) -> &[Arc<PluginInfo>] {
        &self.plugins
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no plugin declared any task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

fn load_plugin(path: &Path) -> Result<(PluginInfo, PluginRef), PluginError> {
    if !path.is_file() {
        return Err(PluginError::NotFound { path: path.to_path_buf() });
    }
    // An absolute path, so that the dynamic loader does not search its
    // library path for a bare file name.
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let library = RawLibrary::load_at(&absolute).map_err(|error| PluginError::NotALibrary {
        path: path.to_path_buf(),
        reason: match error {
            LibraryError::OpenError { err, .. } => err.to_string(),
            other => other.to_string(),
        },
    })?;
    // Plugins are never unloaded: their functions and statics must outlive
    // every task that might still reference them.
    let library: &'static RawLibrary = Box::leak(Box::new(library));
    // SAFETY: the library is leaked above, so the header's 'static borrows stay valid.
    let header = unsafe { lib_header_from_raw_library(library) }.map_err(|error| classify(path, error))?;
    let plugin = header.init_root_module::<PluginRef>().map_err(|error| classify(path, error))?;
    let info = PluginInfo {
        path: path.to_path_buf(),
        name: plugin.name().as_str().to_string(),
        version: plugin.version().as_str().to_string(),
    };
    Ok((info, plugin))
}

fn classify(path: &Path, error: LibraryError) -> PluginError {
    let path = path.to_path_buf();
    match error {
        LibraryError::GetSymbolError { .. } => PluginError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            PluginError::IncompatibleSdk { path, plugin_sdk: actual_version.to_string(), host_sdk: SDK_VERSION }
        }
        LibraryError::InvalidAbiHeader(header) => PluginError::IncompatibleAbi {
            path,
            host_sdk: SDK_VERSION,
            detail: format!("it was built with an incompatible abi_stable ({header:?})"),
        },
        other => PluginError::IncompatibleAbi { path, host_sdk: SDK_VERSION, detail: first_line(&other.to_string()) },
    }
}

fn first_line(text: &str) -> String {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}
