//! The `orcs` binary: the command line with the seed's example jobs (see the `orcs_cli` docs).

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    orcs_cli::App::examples().run()
}
