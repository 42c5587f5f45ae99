//! The `orcs` binary: the command line with the seed's example jobs (see the `orcs_cli` docs).

use std::process::ExitCode;

fn main() -> ExitCode {
    orcs_cli::App::examples().run()
}
