//! The `agff-lens` binary: runs [`agff_lens::cli::main`] (the desktop app without a
//! subcommand, the command line with one).

use std::process::ExitCode;

// Model inference allocates and frees many large tensors; mimalloc keeps freed pages for
// reuse instead of returning them to the OS and faulting them in again (about 10–15% of an
// embedding on CPU with the system allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    agff_lens::cli::main()
}
