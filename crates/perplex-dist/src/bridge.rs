//! Safe wrappers over the C ABI of `bridge.cpp`: a store and a Gloo process group. Errors are
//! the C++ exception's message (without its backtrace).
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

/// Whether the bridge was compiled in (see `build.rs`).
pub(crate) const AVAILABLE: bool = true;

extern "C" {
    fn pd_string_free(s: *mut c_char);
    #[cfg(test)]
    fn pd_test_out_of_memory() -> *mut c_char;
    fn pd_bytes_free(b: *mut u8);
    fn pd_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn pd_store_free(store: *mut c_void);
    fn pd_store_set(
        store: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
    ) -> *mut c_char;
    fn pd_store_get(
        store: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    fn pd_store_check(store: *mut c_void, key: *const c_char, present: *mut c_int) -> *mut c_char;
    fn pd_group_new(
        store: *mut c_void,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        interface: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn pd_group_free(group: *mut c_void);
    fn pd_all_reduce_sum(group: *mut c_void, tensor: *const C_tensor) -> *mut c_char;
    fn pd_broadcast(group: *mut c_void, tensor: *const C_tensor, root: c_int) -> *mut c_char;
    fn pd_all_gather(
        group: *mut c_void,
        out: *const C_tensor,
        input: *const C_tensor,
    ) -> *mut c_char;
    fn pd_barrier(group: *mut c_void) -> *mut c_char;
}

/// The bridge's error string (freed here), if there was one.
fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'd by the bridge.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { pd_string_free(err) };
    Err(message)
}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A c10d `TCPStore` (served by this process, or a client of another's) behind a `PrefixStore`.
pub(crate) struct Store(NonNull<c_void>);

// SAFETY: c10d stores are used from one thread at a time here, and c10d's TCPStore is itself
// safe to use from several threads.
unsafe impl Send for Store {}

impl Store {
    pub(crate) fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Self, String> {
        let (host, prefix) = (c_string(host)?, c_string(prefix)?);
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings; `out` is written only on success.
        check(unsafe {
            pd_store_new(
                host.as_ptr(),
                port,
                c_int::from(is_server),
                millis(timeout),
                prefix.as_ptr(),
                &mut out,
            )
        })?;
        Ok(Self(
            NonNull::new(out).ok_or("the bridge returned no store")?,
        ))
    }

    pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = c_string(key)?;
        // SAFETY: the handle is live; the value slice outlives the call.
        check(unsafe { pd_store_set(self.0.as_ptr(), key.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// `key`'s value, waiting for it up to the store's timeout.
    pub(crate) fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = c_string(key)?;
        let (mut value, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the handle is live; on success `value` holds `len` malloc'd bytes.
        check(unsafe { pd_store_get(self.0.as_ptr(), key.as_ptr(), &mut value, &mut len) })?;
        let bytes = unsafe { std::slice::from_raw_parts(value, len) }.to_vec();
        unsafe { pd_bytes_free(value) };
        Ok(bytes)
    }

    /// Whether `key` is set, without waiting.
    pub(crate) fn check(&self, key: &str) -> Result<bool, String> {
        let key = c_string(key)?;
        let mut present = 0;
        // SAFETY: the handle is live.
        check(unsafe { pd_store_check(self.0.as_ptr(), key.as_ptr(), &mut present) })?;
        Ok(present != 0)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by `pd_store_new`, freed once.
        unsafe { pd_store_free(self.0.as_ptr()) }
    }
}

/// A c10d `ProcessGroupGloo`.
pub(crate) struct Group(NonNull<c_void>);

// SAFETY: as for `Store`; c10d process groups are thread-safe.
unsafe impl Send for Group {}

impl Group {
    pub(crate) fn new(
        store: &Store,
        prefix: &str,
        rank: usize,
        size: usize,
        timeout: Duration,
        interface: Option<&str>,
    ) -> Result<Self, String> {
        let prefix = c_string(prefix)?;
        let interface = c_string(interface.unwrap_or(""))?;
        let rank = c_int::try_from(rank).map_err(|e| e.to_string())?;
        let size = c_int::try_from(size).map_err(|e| e.to_string())?;
        let mut out = std::ptr::null_mut();
        // SAFETY: the store is live for the call (the group keeps its own reference).
        check(unsafe {
            pd_group_new(
                store.0.as_ptr(),
                prefix.as_ptr(),
                rank,
                size,
                millis(timeout),
                interface.as_ptr(),
                &mut out,
            )
        })?;
        Ok(Self(
            NonNull::new(out).ok_or("the bridge returned no process group")?,
        ))
    }

    /// `t` (contiguous, on the CPU) summed over ranks in place.
    pub(crate) fn all_reduce_sum(&self, t: &Tensor) -> Result<(), String> {
        // SAFETY: the handle is live; `t` is a valid tensor for the call.
        check(unsafe { pd_all_reduce_sum(self.0.as_ptr(), t.as_ptr()) })
    }

    /// `t` replaced by rank `root`'s in place.
    pub(crate) fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), String> {
        let root = c_int::try_from(root).map_err(|e| e.to_string())?;
        // SAFETY: as above.
        check(unsafe { pd_broadcast(self.0.as_ptr(), t.as_ptr(), root) })
    }

    /// Row r of `out` receives rank r's `input`.
    pub(crate) fn all_gather(&self, out: &Tensor, input: &Tensor) -> Result<(), String> {
        // SAFETY: as above.
        check(unsafe { pd_all_gather(self.0.as_ptr(), out.as_ptr(), input.as_ptr()) })
    }

    pub(crate) fn barrier(&self) -> Result<(), String> {
        // SAFETY: as above.
        check(unsafe { pd_barrier(self.0.as_ptr()) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by `pd_group_new`, freed once.
        unsafe { pd_group_free(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message the bridge cannot allocate is still an error (it returned NULL, which reads as
    /// success: issue 24, fault 5), and its static text is not freed.
    #[test]
    fn an_unallocatable_error_message_is_still_an_error() {
        // SAFETY: returns a pointer to the bridge's static message.
        let err = check(unsafe { pd_test_out_of_memory() }).unwrap_err();
        assert!(err.contains("out of memory"), "{err}");
    }
}
