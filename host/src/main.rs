//! The `ovsb` binary; everything lives in the library (`ovsb::cli`).

// mimalloc: the data plane allocates small buffers per call; glibc's malloc showed up in
// profiles (malloc_consolidate) and mimalloc is the usual remedy for async servers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ovsb::cli::main()
}
