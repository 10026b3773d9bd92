//! The `bunker` binary: the server (`bunker server`) and the Vault-style CLI client.

mod server;

/// mimalloc instead of glibc's malloc: a server that allocates per request from many threads
/// kept hundreds of MiB of freed memory resident under glibc (see bench/README.md, memory), and
/// allocation was the largest user-space cost in profiles. Built with `no_thp`: mimalloc no
/// longer asks for transparent huge pages (`madvise`), because re-faulting a purged 2 MiB page
/// made the kernel zero it on the faulting thread, often the storage writer, and that set the
/// DR lag's tail (bench/README.md, "No transparent huge pages"). Where the kernel gives huge
/// pages unasked (THP `always`), `MIMALLOC_ALLOW_THP=0` turns them off for the process.
/// (`--features system-allocator` keeps the system's, for `bench/allocations` only.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bunker_cli::run(std::env::args_os().collect(), server::run)
}
