//! The `ovsb` binary; everything lives in the library (`ovsb::cli`).

fn main() -> std::process::ExitCode {
    ovsb::cli::main()
}
