//! Stand-ins for `bridge.rs` in a build without c10d (no Gloo headers at build time): the types
//! cannot be built, and [`AVAILABLE`] says so before anything tries.
use std::time::Duration;

use tch::Tensor;

/// Whether the bridge was compiled in (see `build.rs`).
pub(crate) const AVAILABLE: bool = false;

const MISSING: &str = "perplex was built without c10d";

/// Uninhabited: no store exists without c10d.
pub(crate) enum Store {}

impl Store {
    pub(crate) fn connect(
        _host: &str,
        _port: u16,
        _is_server: bool,
        _timeout: Duration,
        _prefix: &str,
    ) -> Result<Self, String> {
        Err(MISSING.into())
    }

    pub(crate) fn set(&self, _key: &str, _value: &[u8]) -> Result<(), String> {
        match *self {}
    }

    pub(crate) fn get(&self, _key: &str) -> Result<Vec<u8>, String> {
        match *self {}
    }

    pub(crate) fn check(&self, _key: &str) -> Result<bool, String> {
        match *self {}
    }
}

/// Uninhabited: no process group exists without c10d.
pub(crate) enum Group {}

impl Group {
    pub(crate) fn new(
        store: &Store,
        _prefix: &str,
        _rank: usize,
        _size: usize,
        _timeout: Duration,
        _interface: Option<&str>,
    ) -> Result<Self, String> {
        match *store {}
    }

    pub(crate) fn all_reduce_sum(&self, _t: &Tensor) -> Result<(), String> {
        match *self {}
    }

    pub(crate) fn broadcast(&self, _t: &Tensor, _root: usize) -> Result<(), String> {
        match *self {}
    }

    pub(crate) fn all_gather(&self, _out: &Tensor, _input: &Tensor) -> Result<(), String> {
        match *self {}
    }

    pub(crate) fn barrier(&self) -> Result<(), String> {
        match *self {}
    }
}
