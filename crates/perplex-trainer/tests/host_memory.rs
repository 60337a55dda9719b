//! `trainer.host_allocator = "retain"` (the default) in its own process, so that the page-fault
//! count is this test's alone: a buffer the size of the seed model's logits, allocated and
//! written ten times, faults its pages in at most half as often as with glibc's defaults
//! (typically not at all, against ten times).
//!
//! A plain `main` (`harness = false`), because the setting acts on the main thread's heap: glibc
//! gives every other thread (the test harness runs each test on one) an arena of 64 MiB heaps,
//! from which a 90 MB buffer is always a fresh `mmap`. `perplex train` trains on the main thread.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use perplex_trainer::HostAllocator;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
use tch::{Device, Kind, Tensor};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// Minor page faults of this process so far (all threads: libtorch fills tensors in parallel).
fn minor_faults() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_minflt
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// Minor faults of ten allocate-write-free cycles of a `[2240, 10001]` float32 buffer.
fn faults_of_ten_cycles() -> i64 {
    let touch = || {
        let t = Tensor::ones([2240, 10001], (Kind::Float, Device::Cpu));
        assert_eq!(t.numel(), 2240 * 10001);
    };
    // Warm-up: the heap grows to its working size over the first few cycles (new pages).
    for _ in 0..10 {
        touch();
    }
    let before = minor_faults();
    for _ in 0..10 {
        touch();
    }
    minor_faults() - before
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    eprintln!("host_memory: glibc on Linux only; nothing to test here");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    // Test runners and scripts/gpu-bundle.sh list tests with `--list`: there is none to list.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // 21,876 pages of 4 KiB. With glibc's defaults each 90 MB buffer is a fresh mmap, faulted
    // in page by page.
    let pages = 2240 * 10001 * 4 / 4096;
    // Both sides the best of a few rounds: the host may reclaim idle pages of this VM at any
    // moment (DAMON runs here), and those fault in again whatever the allocator did.
    let best_of_5 = || (0..5).map(|_| faults_of_ten_cycles()).min().unwrap_or(0);
    let system = best_of_5();
    assert!(
        HostAllocator::Retain.apply(),
        "glibc refused the thresholds"
    );
    let retained = best_of_5();
    eprintln!(
        "minor faults for 10 cycles of a {pages}-page buffer (best of 5 rounds): \
         system {system}, retain {retained}"
    );
    // With transparent huge pages on for every mapping, fresh mmaps fault in 2 MiB at a time:
    // a few hundred faults, too few to compare against background noise.
    let thp_always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"));
    if thp_always {
        eprintln!("host_memory: transparent huge pages always on; nothing to compare");
        return;
    }
    assert!(system > 5 * pages, "system allocator: only {system} faults");
    // Typically 0 here. Once, in one CI-like run among many, half the cycles still faulted
    // (109,387): the claim tested is that retaining removes at least half of the faults.
    assert!(
        retained * 2 <= system,
        "retain: {retained} faults against {system} with glibc's defaults"
    );
    eprintln!("host_memory: ok");
}
