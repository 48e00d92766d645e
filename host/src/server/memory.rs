//! Giving freed memory back to the operating system. A peer can make the
//! process allocate a lot for a while (large frames, many connections, a
//! full cache); once that is over, the resident size should come back down.
//! glibc's allocator keeps freed memory in its arenas and raises its mmap
//! threshold after large frees, so on glibc the process fixes that threshold
//! and a thread trims the arenas every few seconds. Elsewhere this does
//! nothing.
//!
//! The threshold is above the buffers a large task's arguments and result
//! pass through (a few MiB: each is received, decoded, encoded and sent), so
//! that they reuse the arenas' memory from one call to the next instead of
//! each being mapped, faulted in page by page and unmapped (a 1 MiB echo
//! spent about a third of the control plane's time in page faults); the
//! trimming gives that memory back once the calls stop. Larger frames (up to
//! `--max-frame-bytes`) get their own mapping, returned when freed.

use std::time::Duration;

/// How often freed memory is given back.
const TRIM_EVERY: Duration = Duration::from_secs(3);

/// Allocations at least this large get their own mapping, returned on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the top of an arena beyond this is given back at once
/// (fixing the mmap threshold fixes this one at its default, 128 KiB,
/// which would unmap a freed large buffer at once).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 2 * MMAP_THRESHOLD;

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
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
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
