//! The `flotilla` command line: parses arguments (lexopt) into a configuration and runs it.
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or input.

mod cli;

fn main() {
    let code = match cli::run(std::env::args_os().skip(1).collect()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flotilla: {}", e.message);
            e.code
        }
    };
    std::process::exit(code);
}
