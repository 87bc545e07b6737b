//! The `ovsb` binary; everything lives in the library (`ovsb::cli`).

// mimalloc: the data plane allocates small buffers per call; glibc's malloc showed up in
// profiles (malloc_consolidate) and mimalloc is the usual remedy for async servers.
#[cfg(not(feature = "heap-stats"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "heap-stats")]
#[global_allocator]
static GLOBAL: heap_stats::Counting = heap_stats::Counting;

/// With the `heap-stats` feature: mimalloc, counting the bytes held in
/// `ovsb::telemetry::HEAP_LIVE_BYTES` (`ovsb_heap_live_bytes`), for measuring what the process
/// holds as against what the allocator keeps. One atomic add per allocation: not for production.
#[cfg(feature = "heap-stats")]
#[allow(unsafe_code)]
mod heap_stats {
    use std::alloc::{GlobalAlloc, Layout};

    pub struct Counting;

    fn count(bytes: i64) {
        ovsb::telemetry::HEAP_LIVE_BYTES.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    // SAFETY: every call is forwarded to mimalloc unchanged; only a counter is kept beside it.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size() as i64);
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size() as i64);
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count(-(layout.size() as i64));
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size as i64 - layout.size() as i64);
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

fn main() -> std::process::ExitCode {
    ovsb::cli::main()
}
