//! The `agff-lens` binary: runs [`agff_lens::cli::main`] (the desktop app without a
//! subcommand, the command line with one).

use std::process::ExitCode;

// Model inference allocates and frees many large tensors; mimalloc keeps freed pages for
// reuse instead of returning them to the OS and faulting them in again (about 10–15% of an
// embedding on CPU with the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_e` of the mimalloc v3 header that
/// libmimalloc-sys builds (the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default purge delay (ms), which tells that the index above is that option.
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// For `train` and `bench`, keep freed pages instead of giving them back to the OS 10 ms
/// after they are freed (mimalloc's default). A training step frees and allocates the same
/// large buffers every step, hundreds of milliseconds apart; with the default every one was
/// faulted in again (18 million page faults and 13 % of the CPU time in the kernel over the
/// demo recipe's stage 2), and `bench contrastive` ran a step in a median 0.96–1.00 s
/// against 0.74–0.78 s with this (three interleaved pairs; README, "Speed"). These
/// commands reach their peak memory in the first step anyway.
/// The app and the other commands keep the default, so memory goes back after a big job.
/// `MIMALLOC_PURGE_DELAY` in the environment, when set, wins.
fn keep_freed_pages_for_numeric_loops() {
    let command = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if !matches!(command.as_deref(), Some("train" | "bench"))
        || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
    {
        return;
    }
    // SAFETY: mi_option_get and mi_option_set read and write one of mimalloc's option
    // words; any index below `_mi_option_last` is valid, and 15 is checked by its default.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == DEFAULT_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_pages_for_numeric_loops();
    agff_lens::cli::main()
}
