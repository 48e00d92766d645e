//! A plugin for the crash-isolation tests (docs/isolation.md): tasks that
//! kill the process running them in each way native code can, one that
//! leaks memory, and a harmless one to stand beside them.

use fastworker_plugin_sdk::task;

/// Aborts the process (SIGABRT).
#[task]
fn abort_now() -> u32 {
    std::process::abort()
}

/// Sleeps `ms` milliseconds, then aborts: a run that outlasts the durable
/// mode's commit window before it kills its process.
#[task]
fn abort_after_ms(ms: u64) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    std::process::abort()
}

/// Writes through a null pointer (SIGSEGV).
#[task]
fn segfault() -> u32 {
    // SAFETY: none; crashing the process is this task's purpose.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u32>(), 1) };
    0
}

/// Exits the process with status 3, running no destructor.
#[task]
fn exit_now() -> u32 {
    std::process::exit(3)
}

/// Recurses until the stack overflows (SIGSEGV on the guard page, which
/// Rust reports and turns into an abort).
#[task]
fn overflow_stack() -> u64 {
    deeper(std::hint::black_box(1))
}

/// One frame of the recursion: a frame-sized buffer the optimizer keeps
/// (`black_box`) and work after the call, so no tail call removes it.
#[inline(never)]
#[allow(unconditional_recursion)]
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    deeper(frame[(n % 64) as usize].wrapping_add(1)).wrapping_add(frame[0])
}

/// Panics while a panic unwinds (a destructor panics): Rust aborts.
#[task]
fn double_panic() -> u32 {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("second panic, in a destructor while unwinding");
        }
    }
    let _guard = PanicsOnDrop;
    panic!("first panic")
}

/// Leaks `mib` MiB, touching every page so that it counts in the RSS;
/// returns the MiB leaked.
#[task]
fn leak_mb(mib: u32) -> u32 {
    let mut block = vec![0u8; (mib as usize) << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::mem::forget(std::hint::black_box(block));
    mib
}

/// Writes what its control plane must not take into its worker process's
/// link (the socket pair named by `--link-fd`): `"huge"`, a length prefix
/// of 4 GiB; `"tag"`, an unknown channel tag; `"dispatch"`, a whole frame
/// of a kind only the control plane sends. Then runs on for 10 s, as
/// hostile plugin code would. Returns 0 where there is no such link.
#[task]
fn corrupt_link(how: String) -> u32 {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let fd = args
        .windows(2)
        .find(|pair| pair[0] == b"--link-fd")
        .and_then(|pair| std::str::from_utf8(pair[1]).ok()?.parse::<i32>().ok());
    let Some(fd) = fd else { return 0 };
    let frame: &[u8] = match how.as_str() {
        "huge" => &[0xff, 0xff, 0xff, 0xff, 3],
        "tag" => &[4, 0, 0, 0, 0xee],
        _ => &[4, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    // SAFETY: none needed beyond the descriptor being open; it is not
    // closed here (ManuallyDrop), the process keeps owning it.
    let mut link = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = link.write_all(frame);
    std::thread::sleep(std::time::Duration::from_secs(10));
    1
}

/// Answers its argument: the bystander beside the crashing tasks.
#[task]
fn echo_back(text: String) -> String {
    text
}

fastworker_plugin_sdk::export_plugin!(
    abort_now,
    abort_after_ms,
    segfault,
    exit_now,
    overflow_stack,
    double_panic,
    leak_mb,
    corrupt_link,
    echo_back
);
