//! How many threads NNG runs in this process, chosen once before NNG's
//! first use: its task threads (every Aio callback runs on one), its
//! timeout ("expire") threads and its name-resolver threads.
//!
//! NNG picks these from the core count when it starts (2 task threads per
//! core up to 16, 1 expire thread per core up to 8, 4 resolver threads):
//! twice as many task threads as cores, which only adds wake-ups between a
//! request and its reply. Each `FASTWORKER_NNG_*` variable overrides one;
//! unset, the process uses [`NngThreads::ours`] (the figures behind it:
//! docs/speed.md, "NNG tuned for the machine"). NNG reads them only when it
//! starts, so every process of ours calls [`configure`] first thing: the
//! `fastworker` binary, the benchmark, the Python client's module.
//!
//! NNG's epoll poller (Linux) is always one thread, so there is no poller
//! setting.

use std::ffi::OsString;
use std::sync::OnceLock;

/// The variable for NNG's task (callback) threads.
pub const TASK_THREADS_VAR: &str = "FASTWORKER_NNG_TASK_THREADS";
/// The variable for NNG's timeout (expire) threads.
pub const EXPIRE_THREADS_VAR: &str = "FASTWORKER_NNG_EXPIRE_THREADS";
/// The variable for NNG's name-resolver threads.
pub const RESOLVER_THREADS_VAR: &str = "FASTWORKER_NNG_RESOLVER_THREADS";

/// The most threads of each kind a variable may ask for.
pub const MAX_THREADS: u64 = 64;

/// NNG's parameter numbers (`nng_init_parameter` in nng.h, NNG 1.11).
const NUM_TASK_THREADS: i32 = 1;
const NUM_EXPIRE_THREADS: i32 = 2;
const NUM_RESOLVER_THREADS: i32 = 4;
const MAX_TASK_THREADS: i32 = 5;
const MAX_EXPIRE_THREADS: i32 = 6;

extern "C" {
    // In the NNG library nng-sys/ builds (src/nng.c); not thread-safe, and
    // ignored once NNG has started.
    fn nng_init_set_parameter(parameter: i32, value: u64);
}

/// One kind of thread: a count, or NNG's own choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// This many.
    Count(u64),
    /// Whatever NNG picks from the core count (the variable set to `nng`).
    Nng,
}

/// NNG's thread settings for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NngThreads {
    /// Threads that run Aio callbacks (NNG runs at least 2).
    pub task: Threads,
    /// Threads that time out operations.
    pub expire: Threads,
    /// Threads that resolve host names when dialing or listening.
    pub resolver: Threads,
}

/// A `FASTWORKER_NNG_*` variable that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} {problem}: give a whole number from {least} to {MAX_THREADS}, or `nng` for NNG's own choice (unset: {default})")]
pub struct NngThreadsError {
    /// The variable.
    pub variable: &'static str,
    /// What it was set to (lossily, if not UTF-8).
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
    /// The least it may be.
    pub least: u64,
    /// What the process uses when it is unset.
    pub default: String,
}

impl NngThreads {
    /// The settings a process uses when no variable is set, for a machine
    /// of `cores` cores: one task thread per core, at least 2 (NNG's least)
    /// and at most 16 (NNG's own cap), where NNG starts two per core; its
    /// own choice of expire threads (one per core up to 8: each has its
    /// own lock, which a large machine needs) and resolver threads (4).
    /// On 2 cores, 2 task threads cut the CPU time of each round trip and
    /// lowered the NNG floor; more than one per core only added wake-ups
    /// (docs/speed.md, "NNG tuned for the machine").
    pub fn ours(cores: usize) -> NngThreads {
        let cores = u64::try_from(cores).unwrap_or(u64::MAX);
        NngThreads { task: Threads::Count(cores.clamp(2, 16)), expire: Threads::Nng, resolver: Threads::Nng }
    }

    /// NNG's own choices throughout (every variable set to `nng`).
    pub fn nng() -> NngThreads {
        NngThreads { task: Threads::Nng, expire: Threads::Nng, resolver: Threads::Nng }
    }

    /// The settings `lookup` (the environment) gives on a machine of
    /// `cores` cores: each variable set overrides [`NngThreads::ours`].
    pub fn from_vars(lookup: impl Fn(&str) -> Option<OsString>, cores: usize) -> Result<NngThreads, NngThreadsError> {
        let ours = NngThreads::ours(cores);
        let read = |variable: &'static str, least: u64, default: Threads| -> Result<Threads, NngThreadsError> {
            let Some(raw) = lookup(variable) else { return Ok(default) };
            let value = raw.to_string_lossy().into_owned();
            let fail = |problem| NngThreadsError {
                variable,
                value: value.clone(),
                problem,
                least,
                default: default.to_string(),
            };
            let text = raw.to_str().ok_or_else(|| fail("is not UTF-8"))?.trim();
            if text.eq_ignore_ascii_case("nng") {
                return Ok(Threads::Nng);
            }
            let n: u64 = text.parse().map_err(|_| fail("is not a whole number"))?;
            if n < least {
                return Err(fail(if least == 2 {
                    "is too few (NNG runs at least 2 task threads)"
                } else {
                    "is too few"
                }));
            }
            if n > MAX_THREADS {
                return Err(fail("is too many"));
            }
            Ok(Threads::Count(n))
        };
        Ok(NngThreads {
            task: read(TASK_THREADS_VAR, 2, ours.task)?,
            expire: read(EXPIRE_THREADS_VAR, 1, ours.expire)?,
            resolver: read(RESOLVER_THREADS_VAR, 1, ours.resolver)?,
        })
    }

    /// Hands the settings to NNG. Only takes effect before NNG's first use
    /// in this process, and must not race another thread's use of NNG:
    /// hence [`configure`], the one caller.
    fn apply(&self) {
        // SAFETY: `nng_init_set_parameter` stores a value in NNG's list of
        // start-up parameters (it ignores the call once NNG has started);
        // the list is not locked, so this runs once per process, under
        // `configure`'s OnceLock, before any socket of ours exists.
        unsafe {
            if let Threads::Count(n) = self.task {
                nng_init_set_parameter(NUM_TASK_THREADS, n);
                // The cap (16 as compiled) would cut a larger count.
                nng_init_set_parameter(MAX_TASK_THREADS, n);
            }
            if let Threads::Count(n) = self.expire {
                nng_init_set_parameter(NUM_EXPIRE_THREADS, n);
                nng_init_set_parameter(MAX_EXPIRE_THREADS, n);
            }
            if let Threads::Count(n) = self.resolver {
                nng_init_set_parameter(NUM_RESOLVER_THREADS, n);
            }
        }
    }
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::Count(n) => write!(f, "{n}"),
            Threads::Nng => f.write_str("nng"),
        }
    }
}

impl std::fmt::Display for NngThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {}, expire {}, resolver {}", self.task, self.expire, self.resolver)
    }
}

/// Reads the `FASTWORKER_NNG_*` variables and sets NNG's threads from them,
/// once per process (later calls return the first answer). Call it before
/// anything in the process opens an NNG socket: NNG ignores settings given
/// after it started.
pub fn configure() -> Result<NngThreads, NngThreadsError> {
    static CHOSEN: OnceLock<Result<NngThreads, NngThreadsError>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = NngThreads::from_vars(|name| std::env::var_os(name), cores)?;
            threads.apply();
            Ok(threads)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], cores: usize) -> Result<NngThreads, NngThreadsError> {
        NngThreads::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v)), cores)
    }

    #[test]
    fn unset_variables_give_our_defaults() {
        assert_eq!(with(&[], 2), Ok(NngThreads::ours(2)));
        assert_eq!(NngThreads::ours(1).task, Threads::Count(2));
        assert_eq!(NngThreads::ours(2).task, Threads::Count(2));
        assert_eq!(NngThreads::ours(8).task, Threads::Count(8));
        assert_eq!(NngThreads::ours(64).task, Threads::Count(16));
        assert_eq!((NngThreads::ours(64).expire, NngThreads::ours(64).resolver), (Threads::Nng, Threads::Nng));
    }

    #[test]
    fn each_variable_overrides_one_setting() {
        let threads = with(&[(TASK_THREADS_VAR, "4"), (EXPIRE_THREADS_VAR, " nng "), (RESOLVER_THREADS_VAR, "3")], 2);
        assert_eq!(
            threads,
            Ok(NngThreads { task: Threads::Count(4), expire: Threads::Nng, resolver: Threads::Count(3) })
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        for (variable, value) in [
            (TASK_THREADS_VAR, "1"),
            (TASK_THREADS_VAR, "65"),
            (EXPIRE_THREADS_VAR, "0"),
            (EXPIRE_THREADS_VAR, "-1"),
            (RESOLVER_THREADS_VAR, "many"),
            (RESOLVER_THREADS_VAR, "99999999999999999999999"),
            (TASK_THREADS_VAR, ""),
        ] {
            let error = with(&[(variable, value)], 2).expect_err(value);
            assert_eq!(error.variable, variable);
            let message = error.to_string();
            assert!(message.starts_with(variable) && message.contains("whole number"), "{message}");
        }
    }
}
