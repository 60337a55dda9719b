//! How freed host (CPU) memory is handled between training steps.
//!
//! libtorch's CPU allocator takes its memory from the C library's `malloc`. glibc serves every
//! request above `M_MMAP_THRESHOLD` (dynamic, at most 32 MiB by default) with a fresh `mmap` and
//! gives it back with `munmap` on free. A training step of the seed word-level model allocates
//! and frees several `[2240, 10001]` float32 buffers (logits, their softmax and gradient: 90 MB
//! each), so every step maps them anew and the kernel zero-fills every page on first touch: about
//! 100,000 minor page faults per step, measured with `/usr/bin/time` (1.6 M for 16 steps).
//!
//! [`HostAllocator::Retain`] raises glibc's mmap and trim thresholds to their maximum
//! (`mallopt(M_MMAP_THRESHOLD)`, `mallopt(M_TRIM_THRESHOLD)`, glibc `malloc(3)`), so freed
//! buffers stay in the heap and the next step reuses them: 16 steps took 230,000 faults instead
//! of 1.6 M, and tokens/s rose by about a fifth (docs/performance.md). The price is a higher peak
//! resident set (freed memory is kept, and the heap can fragment). The setting is process-wide
//! and applies to allocations made after it, from the main thread's heap: glibc serves other
//! threads from arenas of 64 MiB heaps, where larger buffers are always fresh mappings, so
//! train on the main thread (as `perplex train` does). Elsewhere than glibc on Linux it does
//! nothing.

use crate::config::config_enum;

/// The `trainer.host_allocator` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostAllocator {
    /// Keep freed host memory for reuse instead of returning it to the OS (glibc only).
    #[default]
    Retain,
    /// Leave the C library's settings as they are. (In a process where `Retain` was applied
    /// already, it stays applied: glibc's dynamic threshold cannot be restored.)
    System,
}

config_enum!(HostAllocator { Retain => "retain", System => "system" });

impl HostAllocator {
    /// Applies the setting to this process. Returns whether it changed the allocator's settings
    /// now (false for `System`, when the C library is not glibc, or when glibc refused).
    pub fn apply(self) -> bool {
        match self {
            HostAllocator::System => false,
            HostAllocator::Retain => retain_freed_memory(),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn retain_freed_memory() -> bool {
    // mallopt takes an int: 2 GiB - 1 is the largest threshold it accepts. Blocks larger
    // than that are still mapped and unmapped each time.
    // SAFETY: mallopt only sets allocator parameters; both are documented, valid values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn retain_freed_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_changes_nothing_and_retain_is_accepted_on_glibc() {
        assert!(!HostAllocator::System.apply());
        let applied = HostAllocator::Retain.apply();
        assert_eq!(
            applied,
            cfg!(all(target_os = "linux", target_env = "gnu")),
            "glibc refused the thresholds"
        );
    }

    #[test]
    fn parses_from_config_names() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            a: HostAllocator,
        }
        let t: T = toml::from_str("a = \"system\"").unwrap();
        assert_eq!(t.a, HostAllocator::System);
        let err = toml::from_str::<T>("a = \"jemalloc\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`jemalloc` is not one of \"retain\", \"system\""),
            "{err}"
        );
        assert!(toml::from_str::<T>("a = { system = {} }").is_err());
        assert_eq!(HostAllocator::Retain.to_string(), "retain");
    }
}
