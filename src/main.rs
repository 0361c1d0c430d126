use std::process::ExitCode;

fn main() -> ExitCode {
    agff_lens::cli::main()
}
