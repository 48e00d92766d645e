//! Loading task plugins and finding their tasks by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use abi_stable::std_types::RStr;
use fastworker_plugin_sdk::abi::{prefix, with_schemas, PluginRef, TaskDecl, TaskSchema as ExportedSchema};
use fastworker_plugin_sdk::SDK_VERSION;

use crate::plugins::schedule::{Schedule, ScheduleError};
use crate::plugins::task_schema::TaskSchema;
use crate::wire::protocol::OfferedTask;
use crate::wire::task_limit::TaskLimit;

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
    /// Its argument and result schemas; `None` for a plugin built before
    /// the SDK exported them.
    pub schema: Option<Arc<TaskSchema>>,
    /// Its declared cluster-wide limit (`#[task(rate = ..., max_running = ...)]`);
    /// `None` when it declares none or its plugin predates them.
    pub limit: Option<TaskLimit>,
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
    /// A plugin given by name (`--task-modules mytasks`) is in none of the
    /// directories searched.
    #[error(
        "plugin '{name}': not found; looked for {} in {}: pass its path, or add its directory to FASTWORKER_PLUGIN_PATH",
        names.join(", "),
        looked.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFoundByName {
        /// The name given.
        name: String,
        /// The file names tried.
        names: Vec<String>,
        /// The directories searched, in order.
        looked: Vec<PathBuf>,
    },
    /// The file could not be opened as a shared library.
    #[error("plugin {path}: not a loadable shared library ({reason}); pass the cdylib a plugin crate builds")]
    NotALibrary {
        /// The path given.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A file that looks like a shared library of this machine but is not
    /// whole: the dynamic loader would map it past its end and the process
    /// would die (SIGBUS) instead of refusing it, so it is checked first.
    #[error("plugin {path}: not a whole shared library ({reason}); rebuild the plugin: the file may be truncated or corrupt")]
    Corrupt {
        /// The path given.
        path: PathBuf,
        /// What is wrong with the file.
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
    /// A task's further options (`task_meta`) are not what the SDK writes.
    #[error("plugin {path}: task '{task}' declares options the host cannot take ({reason}); rebuild the plugin with this SDK and check its #[task(rate = ..., burst = ..., max_running = ...)]")]
    BadTaskMeta {
        /// The path given.
        path: PathBuf,
        /// The task.
        task: String,
        /// What is wrong.
        reason: String,
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
    /// A bare name (`mytasks`) is found as `locate` says.
    pub fn load(paths: &[PathBuf]) -> Result<Registry, PluginError> {
        let mut registry = Registry::default();
        let dirs = crate::plugins::locate::search_dirs();
        for given in paths {
            let path = &crate::plugins::locate::resolve(given, &dirs)?;
            let (info, tasks, schemas, meta) = load_plugin(path)?;
            let info = Arc::new(info);
            // One schema per task, or none at all (a plugin of an older SDK).
            let schemas = schemas.filter(|schemas| schemas.len() == tasks.len());
            let limits = task_limits(path, tasks, meta)?;
            for (index, decl) in tasks.iter().enumerate() {
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
                let schema = schemas.and_then(|schemas| TaskSchema::load(&name, &schemas[index])).map(Arc::new);
                let limit = limits[index];
                registry.tasks.insert(name, LoadedTask { decl: *decl, plugin: info.clone(), schema, limit });
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

    /// All tasks as a subworker offers them to its control plane: name,
    /// defaults, schemas and declared limit, sorted by name.
    pub fn offered(&self) -> Vec<OfferedTask> {
        let text = |value: &serde_json::Value| value.to_string();
        self.tasks()
            .into_iter()
            .map(|task| OfferedTask {
                args_schema: task.schema.as_ref().map(|schema| text(&schema.args)),
                result_schema: task.schema.as_ref().map(|schema| text(&schema.result)),
                limit: task.limit,
                ..OfferedTask::from(&task.decl)
            })
            .collect()
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

/// A loaded plugin's tasks and, when its SDK exports them, their schemas
/// and further options.
type Loaded = (PluginInfo, &'static [TaskDecl], Option<&'static [ExportedSchema]>, &'static [RStr<'static>]);

/// Each task's declared limit, from its `task_meta` entry (none at all for
/// a plugin that predates them). Keys the host does not know are ignored.
fn task_limits(path: &Path, tasks: &[TaskDecl], meta: &[RStr<'static>]) -> Result<Vec<Option<TaskLimit>>, PluginError> {
    let refuse = |task: &str, reason: String| PluginError::BadTaskMeta {
        path: path.to_path_buf(),
        task: task.chars().take(crate::wire::protocol::MAX_NAME_BYTES).collect(),
        reason,
    };
    if meta.is_empty() {
        return Ok(vec![None; tasks.len()]);
    }
    if meta.len() != tasks.len() {
        let first = tasks.first().map_or("", |t| t.name.as_str());
        return Err(refuse(first, format!("{} option entries for {} tasks", meta.len(), tasks.len())));
    }
    tasks
        .iter()
        .zip(meta)
        .map(|(decl, text)| {
            let text = text.as_str();
            if text.trim().is_empty() {
                return Ok(None);
            }
            let limit: TaskLimit = serde_json::from_str(text)
                .map_err(|error| refuse(decl.name.as_str(), format!("not the JSON object expected: {error}")))?;
            limit.check().map_err(|error| refuse(decl.name.as_str(), error.to_string()))?;
            Ok(Some(limit).filter(TaskLimit::limits))
        })
        .collect()
}

fn load_plugin(path: &Path) -> Result<Loaded, PluginError> {
    if !path.is_file() {
        return Err(PluginError::NotFound { path: path.to_path_buf() });
    }
    // An absolute path, so that the dynamic loader does not search its
    // library path for a bare file name.
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    check_shared_object(path, &absolute)?;
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
    let info = |name: RStr<'static>, version: RStr<'static>| PluginInfo {
        path: path.to_path_buf(),
        name: name.as_str().to_string(),
        version: version.as_str().to_string(),
    };
    match header.init_root_module::<PluginRef>() {
        Ok(plugin) => Ok((
            info(plugin.name(), plugin.version()),
            plugin.tasks().as_slice(),
            Some(plugin.schemas().as_slice()),
            plugin.task_meta().as_slice(),
        )),
        // Built before tasks had further options: its root module ends at
        // `schemas`; or before they had schemas: it ends at `tasks`.
        Err(error @ LibraryError::AbiInstability(_)) => match header.init_root_module::<with_schemas::PluginRef>() {
            Ok(plugin) => Ok((
                info(plugin.name(), plugin.version()),
                plugin.tasks().as_slice(),
                Some(plugin.schemas().as_slice()),
                &[],
            )),
            Err(_) => match header.init_root_module::<prefix::PluginRef>() {
                Ok(plugin) => Ok((info(plugin.name(), plugin.version()), plugin.tasks().as_slice(), None, &[])),
                Err(_) => Err(classify(path, error)),
            },
        },
        Err(error) => Err(classify(path, error)),
    }
}

/// Checks, before the dynamic loader maps it, that `file` is a shared
/// library of this machine whose every segment and table lies inside it: the
/// loader trusts the headers and maps segments past the end of a truncated
/// file, and the first touch of such a page kills the process. Refusals name
/// `path`, the path given.
#[cfg(target_os = "linux")]
fn check_shared_object(path: &Path, file: &Path) -> Result<(), PluginError> {
    use object::elf;
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::read::{ReadCache, ReadRef};

    #[cfg(target_pointer_width = "64")]
    type Header = elf::FileHeader64<object::NativeEndian>;
    #[cfg(target_pointer_width = "32")]
    type Header = elf::FileHeader32<object::NativeEndian>;
    const CLASS: (u8, &str) =
        if cfg!(target_pointer_width = "64") { (elf::ELFCLASS64, "64-bit") } else { (elf::ELFCLASS32, "32-bit") };
    const DATA: (u8, &str) = if cfg!(target_endian = "little") {
        (elf::ELFDATA2LSB, "little-endian")
    } else {
        (elf::ELFDATA2MSB, "big-endian")
    };

    let not_a_library = |reason: String| PluginError::NotALibrary { path: path.to_path_buf(), reason };
    let corrupt = |reason: String| PluginError::Corrupt { path: path.to_path_buf(), reason };

    let opened = std::fs::File::open(file).and_then(|f| f.metadata().map(|m| (f, m.len())));
    let (opened, size) = opened.map_err(|error| not_a_library(format!("it cannot be read: {error}")))?;
    let cache = ReadCache::new(opened);
    let data = &cache;
    let unreadable = |()| not_a_library("it cannot be read".to_string());
    let magic = data.read_bytes_at(0, size.min(elf::ELFMAG.len() as u64)).map_err(unreadable)?;
    if !elf::ELFMAG.starts_with(magic) {
        return Err(not_a_library("it is not an ELF file".to_string()));
    }
    if size == 0 {
        return Err(corrupt("the file is empty".to_string()));
    }
    let header: &Header =
        data.read_at(0).map_err(|()| corrupt(format!("the file is {size} bytes long, too short for an ELF header")))?;
    let ident = header.e_ident();
    if ident.class != CLASS.0 {
        return Err(not_a_library(format!("it is not a {} ELF file, as this host needs", CLASS.1)));
    }
    if ident.data != DATA.0 {
        return Err(not_a_library(format!("it is not a {} ELF file, as this host needs", DATA.1)));
    }
    if ident.version != elf::EV_CURRENT {
        return Err(corrupt(format!("unknown ELF version {}", ident.version)));
    }
    let endian = header.endian().map_err(|error| corrupt(error.to_string()))?;
    let kind = header.e_type(endian);
    if kind != elf::ET_DYN {
        let what = match kind {
            elf::ET_EXEC => "an executable",
            elf::ET_REL => "a relocatable object (.o)",
            elf::ET_CORE => "a core dump",
            _ => "an ELF file of an unknown type",
        };
        return Err(not_a_library(format!("it is {what}, not a shared object")));
    }
    let machine = header.e_machine(endian);
    if NATIVE_MACHINE.is_some_and(|native| native != machine) {
        return Err(not_a_library(format!(
            "it is built for another architecture (ELF machine {machine}), and this host is {}",
            std::env::consts::ARCH
        )));
    }
    let segments = header.program_headers(endian, data).map_err(|error| {
        corrupt(format!("its program header table is cut off or malformed in the {size}-byte file: {error}"))
    })?;
    if !segments.iter().any(|segment| segment.p_type(endian) == elf::PT_LOAD) {
        return Err(corrupt("it has no loadable segment".to_string()));
    }
    // PT_NULL entries are unused: the loader skips them, whatever they hold.
    for (index, segment) in segments.iter().enumerate().filter(|(_, s)| s.p_type(endian) != elf::PT_NULL) {
        // A word is a u32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let (offset, length): (u64, u64) = (segment.p_offset(endian).into(), segment.p_filesz(endian).into());
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(corrupt(format!(
                "program header {index} ({}) covers bytes {offset} to {}, past the end of the {size}-byte file",
                segment_name(segment.p_type(endian)),
                u128::from(offset) + u128::from(length)
            )));
        }
    }
    header.section_headers(endian, data).map_err(|error| {
        corrupt(format!("its section header table is cut off or malformed in the {size}-byte file: {error}"))
    })?;
    Ok(())
}

/// Elsewhere the dynamic loader is trusted with the file as it is.
#[cfg(not(target_os = "linux"))]
fn check_shared_object(_path: &Path, _file: &Path) -> Result<(), PluginError> {
    Ok(())
}

/// The ELF machine of the libraries this host can load, where known.
#[cfg(target_os = "linux")]
const NATIVE_MACHINE: Option<u16> = {
    use object::elf;
    if cfg!(target_arch = "x86_64") {
        Some(elf::EM_X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(elf::EM_AARCH64)
    } else if cfg!(target_arch = "x86") {
        Some(elf::EM_386)
    } else if cfg!(target_arch = "arm") {
        Some(elf::EM_ARM)
    } else if cfg!(any(target_arch = "riscv64", target_arch = "riscv32")) {
        Some(elf::EM_RISCV)
    } else if cfg!(target_arch = "powerpc64") {
        Some(elf::EM_PPC64)
    } else if cfg!(target_arch = "s390x") {
        Some(elf::EM_S390)
    } else if cfg!(target_arch = "loongarch64") {
        Some(elf::EM_LOONGARCH)
    } else {
        None
    }
};

/// A segment type as `readelf` names it.
#[cfg(target_os = "linux")]
fn segment_name(kind: u32) -> String {
    use object::elf;
    match kind {
        elf::PT_LOAD => "LOAD".into(),
        elf::PT_DYNAMIC => "DYNAMIC".into(),
        elf::PT_INTERP => "INTERP".into(),
        elf::PT_NOTE => "NOTE".into(),
        elf::PT_PHDR => "PHDR".into(),
        elf::PT_TLS => "TLS".into(),
        elf::PT_GNU_EH_FRAME => "GNU_EH_FRAME".into(),
        elf::PT_GNU_RELRO => "GNU_RELRO".into(),
        other => format!("type {other:#x}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::{RResult, RSlice, RVec};
    use fastworker_plugin_sdk::abi::TaskFailure;
    use fastworker_plugin_sdk::{TaskContext, TaskOptions};

    extern "C" fn nothing(_: &TaskContext<'_>, _: RSlice<'_, u8>) -> RResult<RVec<u8>, TaskFailure> {
        RResult::ROk(RVec::new())
    }

    fn decl(name: &'static str) -> TaskDecl {
        TaskDecl {
            name: RStr::from_str(name),
            signature: RStr::from_str(""),
            doc: RStr::from_str(""),
            options: TaskOptions::DEFAULT,
            call: nothing,
        }
    }

    #[test]
    fn task_meta_gives_limits_ignores_unknown_keys_and_refuses_what_is_malformed() {
        let path = Path::new("libtasks.so");
        let tasks = [decl("a"), decl("b")];
        let meta = [RStr::from_str(r#"{"max_running":2,"added_later":{"x":1}}"#), RStr::from_str("")];
        let limits = task_limits(path, &tasks, &meta).unwrap();
        assert_eq!(limits[0].unwrap().max_running, Some(2));
        assert_eq!(limits[1], None);
        assert_eq!(task_limits(path, &tasks, &[]).unwrap(), vec![None, None], "a plugin without task_meta");
        for (bad, why) in [
            (r#"{"max_running":"two"}"#, "not the JSON object expected"),
            ("not json", "not the JSON object expected"),
            (r#"{"max_running":0}"#, "max_running must be from 1"),
            (r#"{"rate":{"per_second":1e12,"burst":1}}"#, "between one run an hour"),
        ] {
            let meta = [RStr::from_str(""), RStr::from_str(bad)];
            let error = task_limits(path, &tasks, &meta).unwrap_err().to_string();
            assert!(error.contains("task 'b'") && error.contains(why), "{bad}: {error}");
            assert!(error.contains("libtasks.so"), "{error}");
        }
        let error = task_limits(path, &tasks, &[RStr::from_str("")]).unwrap_err().to_string();
        assert!(error.contains("1 option entries for 2 tasks"), "{error}");
    }
}
