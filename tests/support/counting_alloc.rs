//! A global allocator that counts live heap bytes and their peak, for the tests that hold the
//! trainer's CPU memory to the planner (`train_memory.rs`, `train_memory_demo.rs`). Each test
//! binary that includes this (`#[path = "support/counting_alloc.rs"] mod counting_alloc;`)
//! counts its own heap; keep one measuring test per binary, since tests run in parallel.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
pub static CURRENT: AtomicUsize = AtomicUsize::new(0);
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

pub const MIB: f64 = (1u64 << 20) as f64;

/// The real test model (imported by scripts/fetch-test-model.sh).
pub fn test_model() -> PathBuf {
    let assets =
        std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}
