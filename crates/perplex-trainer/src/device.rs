//! Choosing the device.
use tch::{Cuda, Device};

use crate::TrainerError;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks CUDA device 0 when libtorch sees one.
///
/// # Errors
/// [`TrainerError::Device`] for an unknown name or a CUDA device that is not present.
pub fn parse_device(name: &str) -> Result<Device, TrainerError> {
    let err = |message: String| TrainerError::Device {
        device: name.to_string(),
        message,
    };
    let cuda = |i: usize| {
        let n = Cuda::device_count() as usize;
        if i < n {
            Ok(Device::Cuda(i))
        } else {
            Err(err(format!(
                "CUDA device {i} is not available (libtorch sees {n} CUDA device(s))"
            )))
        }
    };
    match name.trim() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(err("expected `auto`, `cpu`, `cuda` or `cuda:N`".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_unknown_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(
            e.contains("expected `auto`, `cpu`, `cuda` or `cuda:N`"),
            "{e}"
        );
    }
}
