//! What a running task may ask of its host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::StableAbi;

/// Handed to every task run: lets a long task notice that it was cancelled or
/// ran past its deadline, and stop early. Take it as the first parameter:
/// `#[task] fn crunch(ctx: &TaskContext, n: u64) -> u64`.
#[repr(C)]
#[derive(StableAbi)]
pub struct TaskContext<'a> {
    cancelled: &'a AtomicBool,
    deadline_unix_ms: u64,
    attempt: u32,
    task_id: [u8; 16],
}

impl<'a> TaskContext<'a> {
    /// Built by the host for each run; `deadline_unix_ms` 0 means none.
    pub fn new(cancelled: &'a AtomicBool, deadline_unix_ms: u64, attempt: u32, task_id: [u8; 16]) -> Self {
        TaskContext { cancelled, deadline_unix_ms, attempt, task_id }
    }

    /// True once somebody cancelled this task.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// When the run must end, if it has a timeout.
    pub fn deadline(&self) -> Option<SystemTime> {
        (self.deadline_unix_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(self.deadline_unix_ms))
    }

    /// True when the task should stop: cancelled or past its deadline.
    pub fn should_stop(&self) -> bool {
        self.is_cancelled() || self.deadline().is_some_and(|d| SystemTime::now() >= d)
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The task's id (a UUID's 16 bytes).
    pub fn task_id(&self) -> [u8; 16] {
        self.task_id
    }
}
