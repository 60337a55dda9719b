//! bfloat16 autocast on the CPU and on CUDA, as `torch.autocast(device_type, dtype=torch.bfloat16)`.
//!
//! `tch::autocast` (tch 0.24) only switches CUDA autocast on and leaves libtorch's CUDA autocast
//! dtype at its default, float16; it has no CPU autocast and no way to choose the dtype. The
//! functions libtorch uses for both (`at::autocast::set_autocast_enabled(DeviceType, bool)`,
//! `at::autocast::set_autocast_dtype(DeviceType, ScalarType)`, ...) are exported by
//! `libtorch_cpu`, which torch-sys already links, and take only one-byte enums and `bool`s, which
//! the C++ ABI passes exactly as C passes `int8_t`/`bool`. They are plain thread-local setters that
//! cannot throw (PyTorch 2.11 `aten/src/ATen/autocast_mode.cpp`). [`autocast_bf16`] calls them
//! and restores the previous state on the way out, even if the closure panics.
//!
//! What autocast does is libtorch's: matmuls, `linear` (and so the GRU's gate projections) run in
//! bfloat16; reductions, softmax and every loss stay float32; parameters, gradients and the
//! optimiser state stay float32 (autograd casts the gradient back through each cast).
//!
//! `f64` needs no autocast: [`Precision::convert`] widens the model's variables to float64 once,
//! before the optimiser is built, and everything computed from them follows their dtype.

use tch::{nn, Device, Kind};

use crate::Precision;

impl Precision {
    /// Runs `f` at this precision on `device`: under [`autocast_bf16`] for `Bf16`, as is for
    /// `F32` and `F64` (whose variables are float64 already, see [`Precision::convert`]). The one
    /// place the trainer, validation, evaluation and `lr_find` choose.
    pub fn scope<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        match self {
            Precision::F32 | Precision::F64 => f(),
            Precision::Bf16 => autocast_bf16(device, f),
        }
    }

    /// The dtype of the parameters, their gradients, the optimiser state and the training loss:
    /// `Double` for `F64`, `Float` otherwise (bf16 autocast keeps float32 parameters).
    pub fn parameter_kind(self) -> Kind {
        match self {
            Precision::F64 => Kind::Double,
            Precision::F32 | Precision::Bf16 => Kind::Float,
        }
    }

    /// The dtype the model's matmuls run in: `BFloat16` for `Bf16` (autocast), else
    /// [`Precision::parameter_kind`]. The dtype of the matmul ceiling that model FLOP
    /// utilisation is measured against.
    pub fn matmul_kind(self) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            Precision::F32 | Precision::F64 => self.parameter_kind(),
        }
    }

    /// Casts the floating-point variables of `vs` (a freshly built model) to
    /// [`Precision::parameter_kind`]: float64 for `F64`, nothing for the others. Call it before
    /// building the optimiser (its state is made like the parameters) and before loading weights.
    ///
    /// Each variable keeps its identity: `VarStore::set_kind` replaces the data of each tensor
    /// in place (`Tensor::set_data`), so every shallow clone the model holds (the GRU's weight
    /// list, an output head tied to the embedding) sees the float64 values, and tied weights
    /// stay one tensor.
    pub fn convert(self, vs: &mut nn::VarStore) {
        if self == Precision::F64 {
            vs.double();
        }
    }
}

/// `c10::DeviceType` values (c10/core/DeviceType.h).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16` (c10/core/ScalarType.h).
const SCALAR_BFLOAT16: i8 = 15;

mod ffi {
    // Itanium-mangled names of free functions in libtorch_cpu (namespace at::autocast).
    extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

fn device_type(device: Device) -> Option<i8> {
    match device {
        Device::Cpu => Some(DEVICE_CPU),
        Device::Cuda(_) => Some(DEVICE_CUDA),
        _ => None,
    }
}

/// Restores the autocast state of one device type when dropped.
struct Guard {
    device: i8,
    was_enabled: bool,
    old_dtype: i8,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: see the module docs; thread-local setters with scalar arguments.
        unsafe {
            // Casts of weights are cached while autocast is nested; the cache must not outlive
            // the region, or the next step would see the bf16 copies of stale weights.
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_dtype(self.device, self.old_dtype);
            ffi::set_autocast_enabled(self.device, self.was_enabled);
        }
    }
}

/// Runs `f` with bfloat16 autocast on for `device`'s type (CPU or CUDA), like
/// `with torch.autocast(device_type, dtype=torch.bfloat16): f()`; on other devices `f` runs
/// as is. Autocast state is per thread, so `f` must do its tensor work on this thread (a
/// backward pass may run afterwards, outside: gradients follow the dtypes of the forward).
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let Some(dev) = device_type(device) else {
        return f();
    };
    // SAFETY: see the module docs.
    let _guard = unsafe {
        let guard = Guard {
            device: dev,
            was_enabled: ffi::is_autocast_enabled(dev),
            old_dtype: ffi::get_autocast_dtype(dev),
        };
        ffi::set_autocast_dtype(dev, SCALAR_BFLOAT16);
        ffi::set_autocast_enabled(dev, true);
        ffi::increment_nesting();
        guard
    };
    f()
}

/// Whether this CPU computes bfloat16 matmuls natively (AVX-512 BF16 or AMX-BF16). Without
/// either, libtorch emulates them: on an AVX2-only AMD EPYC a `[2240,512]x[512,10001]` bf16
/// matmul ran at 2.1 GFLOP/s against 85.6 GFLOP/s in float32, about 40x slower.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // AMX detection is unstable in std; Linux lists it among the CPU flags.
        std::arch::is_x86_feature_detected!("avx512bf16")
            || std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "amx_bf16"))
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn enabled(dev: i8) -> bool {
        unsafe { ffi::is_autocast_enabled(dev) }
    }

    #[test]
    fn cpu_matmul_runs_in_bf16_inside_and_f32_after() {
        let a = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let old = unsafe { ffi::get_autocast_dtype(DEVICE_CPU) };
        let inside = autocast_bf16(Device::Cpu, || {
            assert!(enabled(DEVICE_CPU));
            a.matmul(&b).kind()
        });
        assert_eq!(inside, Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert!(!enabled(DEVICE_CPU));
        assert_eq!(unsafe { ffi::get_autocast_dtype(DEVICE_CPU) }, old);
        // Nested regions restore the outer one.
        autocast_bf16(Device::Cpu, || {
            autocast_bf16(Device::Cpu, || ());
            assert!(enabled(DEVICE_CPU));
            assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
        });
        assert!(!enabled(DEVICE_CPU));
    }

    #[test]
    fn gradients_of_f32_leaves_stay_f32() {
        let w = Tensor::randn([16, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let loss = autocast_bf16(Device::Cpu, || {
            x.matmul(&w).to_kind(Kind::Float).square().sum(Kind::Float)
        });
        loss.backward();
        assert_eq!(w.grad().kind(), Kind::Float);
        let want = x.tr().matmul(&(x.matmul(&w) * 2.0));
        let err = (w.grad() - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            err < 2e-2 * scale,
            "bf16 gradient error {err} vs scale {scale}"
        );
    }

    /// tch's own `autocast` would give float16 here: the dtype must be bfloat16.
    #[test]
    fn cuda_matmul_runs_in_bf16_under_autocast() {
        if !tch::Cuda::is_available() {
            eprintln!("skipped: no CUDA device");
            return;
        }
        let dev = Device::Cuda(0);
        let a = Tensor::randn([8, 16], (Kind::Float, dev));
        let b = Tensor::randn([16, 4], (Kind::Float, dev));
        assert_eq!(autocast_bf16(dev, || a.matmul(&b).kind()), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert!(!enabled(DEVICE_CUDA));
    }

    #[test]
    fn a_panic_inside_leaves_autocast_off() {
        let r = std::panic::catch_unwind(|| autocast_bf16(Device::Cpu, || panic!("inside")));
        assert!(r.is_err());
        assert!(!enabled(DEVICE_CPU));
    }
}
