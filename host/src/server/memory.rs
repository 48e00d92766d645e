//! Giving freed memory back to the operating system. A peer can make the
//! process allocate a lot for a while (large frames, many connections, a
//! full cache); once that is over, the resident size should come back down.
//! glibc's allocator keeps freed memory in its arenas and raises its mmap
//! threshold after large frees, so on glibc the process fixes that threshold
//! (large buffers are mapped and unmapped on their own) and a thread trims
//! the arenas every few seconds. Elsewhere this does nothing.

use std::time::Duration;

/// How often freed memory is given back.
const TRIM_EVERY: Duration = Duration::from_secs(3);

/// Allocations at least this large get their own mapping, returned on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets the allocator up and starts the trimming thread (once per process).
pub(crate) fn give_back_freed_memory() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: mallopt only changes allocator parameters; it is safe
            // to call at any time from any thread.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            let _ = std::thread::Builder::new().name("memory".into()).spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim walks the allocator's own free lists
                // under its locks; it is safe to call from any thread.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        }
        let _ = TRIM_EVERY;
    });
}
