//! Choosing the device.
use tch::{Cuda, Device};

use crate::TrainerError;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks CUDA device 0 when libtorch sees one.
///
/// # Errors
/// [`TrainerError::Device`] for an unknown name or a CUDA device that is not present.
pub fn parse_device(name: &str) -> Result<Device, TrainerError> {
    parse_device_for_local_rank(name, 0)
}

/// [`parse_device`] for the process of local rank `local_rank` (torchrun's `LOCAL_RANK`: its
/// index among the job's processes on this machine): `auto` and `cuda` mean `cuda:LOCAL_RANK`
/// (one GPU per process, as PyTorch DDP's `device_ids=[local_rank]`), `auto` still meaning the
/// CPU where libtorch sees no GPU; `cpu` and an explicit `cuda:N` are taken as written.
///
/// # Errors
/// [`TrainerError::Device`] for an unknown name, or a CUDA device that is not present (a local
/// rank beyond the machine's GPUs names both).
pub fn parse_device_for_local_rank(name: &str, local_rank: usize) -> Result<Device, TrainerError> {
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
        "auto" if !tch::Cuda::is_available() => Ok(Device::Cpu),
        "auto" | "cuda" => cuda(local_rank).map_err(|e| match (local_rank, e) {
            (0, e) => e,
            (r, TrainerError::Device { device, message }) => TrainerError::Device {
                device,
                message: format!("{message}; this process has LOCAL_RANK {r}"),
            },
            (_, e) => e,
        }),
        "cpu" => Ok(Device::Cpu),
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

    #[test]
    fn a_local_rank_picks_its_own_gpu_or_the_cpu_without_one() {
        let n = tch::Cuda::device_count() as usize;
        for rank in 0..3 {
            assert_eq!(
                parse_device_for_local_rank("cpu", rank).unwrap(),
                Device::Cpu
            );
            let auto = parse_device_for_local_rank("auto", rank);
            let cuda = parse_device_for_local_rank("cuda", rank);
            if n == 0 {
                assert_eq!(auto.unwrap(), Device::Cpu);
                let e = cuda.unwrap_err().to_string();
                assert!(e.contains("sees 0 CUDA device"), "{e}");
            } else if rank < n {
                assert_eq!(auto.unwrap(), Device::Cuda(rank));
                assert_eq!(cuda.unwrap(), Device::Cuda(rank));
            } else {
                let e = auto.unwrap_err().to_string();
                assert!(e.contains(&format!("LOCAL_RANK {rank}")), "{e}");
            }
        }
    }
}
