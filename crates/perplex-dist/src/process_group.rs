//! A process group on c10d: the job's `TCPStore` and a Gloo group over it, with the collectives
//! training needs. Setup checks that every rank agrees on the world size before Gloo connects,
//! and a failed collective asks the store which ranks are still there, so the error names the
//! lost one instead of hanging or printing a transport error alone.
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

#[cfg(perplex_c10d)]
use crate::bridge::{Group, Store, AVAILABLE};
#[cfg(not(perplex_c10d))]
use crate::bridge_missing::{Group, Store, AVAILABLE};
use crate::{DistError, Launch};

/// Whether this build can create process groups (Gloo's headers were found when it was built).
pub fn c10d_available() -> bool {
    AVAILABLE
}

/// This process's membership of a data-parallel job (Gloo, CPU tensors; tensors elsewhere go
/// through a CPU copy).
pub struct ProcessGroup {
    launch: Launch,
    // Field order: the group is dropped before the store it met in.
    group: Group,
    store: Store,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.launch.rank)
            .field("world_size", &self.launch.world_size)
            .field("store", &self.launch.store_address())
            .finish()
    }
}

/// Longest wait, after a failed collective, for the other ranks to report that they are alive.
const DIAGNOSIS_GRACE: Duration = Duration::from_secs(5);

impl ProcessGroup {
    /// Joins the job the environment describes (see [`Launch::from_env`]).
    ///
    /// # Errors
    /// [`DistError::Env`] when no launcher variables are set or one is invalid, and the errors
    /// of [`ProcessGroup::connect`].
    pub fn from_env() -> Result<Self, DistError> {
        let launch = Launch::from_env()?.ok_or_else(|| {
            DistError::env(
                "WORLD_SIZE",
                None,
                "is not set (nor SLURM_NTASKS): launch with torchrun or srun",
            )
        })?;
        Self::connect(launch)
    }

    /// Connects to (rank 0 without torchrun's agent: serves) the job's store, checks that every
    /// rank has the same world size, and creates the Gloo group. Waits at most `launch.timeout`.
    ///
    /// # Errors
    /// [`DistError::NotBuilt`], [`DistError::Serve`] (port in use), [`DistError::Unreachable`],
    /// [`DistError::WorldSizeMismatch`], [`DistError::Missing`], [`DistError::Collective`].
    pub fn connect(launch: Launch) -> Result<Self, DistError> {
        if !AVAILABLE {
            return Err(DistError::NotBuilt);
        }
        let address = launch.store_address();
        let prefix = format!("/worker/attempt_{}/perplex/", launch.restart_count);
        let store = Store::connect(
            &launch.master_addr,
            launch.master_port,
            launch.serves_store(),
            launch.timeout,
            &prefix,
        )
        .map_err(|message| store_error(&launch, message))?;
        check_world_size(&store, &launch)?;
        let interface = std::env::var("GLOO_SOCKET_IFNAME").ok();
        let group = Group::new(
            &store,
            "default_pg/",
            launch.rank,
            launch.world_size,
            launch.timeout,
            interface.as_deref(),
        )
        .map_err(|message| DistError::Collective {
            operation: "process group setup",
            rank: launch.rank,
            world_size: launch.world_size,
            cause: format!("connecting the Gloo group through {address}"),
            message: first_line(&message),
        })?;
        tracing::info!(
            rank = launch.rank,
            local_rank = launch.local_rank,
            world_size = launch.world_size,
            store = %address,
            serves_store = launch.serves_store(),
            "joined the process group (c10d, Gloo)"
        );
        Ok(Self {
            launch,
            group,
            store,
        })
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.launch.world_size
    }

    /// How this process was launched.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// `t` summed over all ranks, in place (every rank gets the sum).
    ///
    /// # Errors
    /// [`DistError::Collective`] naming the lost rank when a process is gone.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        self.in_place("all_reduce", t, |g, cpu| g.all_reduce_sum(cpu))
    }

    /// `t` replaced by rank `root`'s `t`, in place.
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_sum`].
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        self.in_place("broadcast", t, |g, cpu| g.broadcast(cpu, root))
    }

    /// Every rank's `t`, stacked: row r is rank r's (`[world_size, ...t's shape]`, on `t`'s
    /// device). Every rank must pass the same shape and kind.
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_sum`].
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let input = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let mut shape = vec![self.world_size() as i64];
        shape.extend(t.size());
        let out = Tensor::f_empty(shape, (t.kind(), Device::Cpu))?;
        self.group
            .all_gather(&out, &input)
            .map_err(|m| self.failed("all_gather", m))?;
        Ok(out.f_to_device(t.device())?)
    }

    /// Returns when every rank has called it.
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_sum`].
    pub fn barrier(&self) -> Result<(), DistError> {
        self.group.barrier().map_err(|m| self.failed("barrier", m))
    }

    /// Runs `op` on a contiguous CPU tensor holding `t`'s values (`t` itself when it is one) and
    /// copies the result back into `t`.
    fn in_place(
        &self,
        operation: &'static str,
        t: &Tensor,
        op: impl FnOnce(&Group, &Tensor) -> Result<(), String>,
    ) -> Result<(), DistError> {
        let direct = t.device() == Device::Cpu && t.is_contiguous();
        let cpu = if direct {
            t.shallow_clone()
        } else {
            t.f_to_device(Device::Cpu)?.f_contiguous()?
        };
        op(&self.group, &cpu).map_err(|m| self.failed(operation, m))?;
        if !direct {
            tch::no_grad(|| t.shallow_clone().f_copy_(&cpu))?;
        }
        Ok(())
    }

    /// The error for a failed collective, with the ranks the store no longer hears from.
    fn failed(&self, operation: &'static str, message: String) -> DistError {
        DistError::Collective {
            operation,
            rank: self.rank(),
            world_size: self.world_size(),
            cause: self.diagnose(),
            message: first_line(&message),
        }
    }

    /// After a failed collective every survivor writes a key; the ranks whose key does not
    /// appear within a short grace period are the lost ones. A store that no longer answers
    /// means its host is gone (rank 0, or torchrun's agent).
    fn diagnose(&self) -> String {
        let key = |r: usize| format!("alive-after-failure/{r}");
        if self.store.set(&key(self.rank()), b"1").is_err() {
            return if self.launch.agent_store {
                "the store no longer answers: torchrun's agent is gone".into()
            } else {
                "lost rank 0 (the store it served no longer answers)".into()
            };
        }
        let deadline = Instant::now() + DIAGNOSIS_GRACE.min(self.launch.timeout);
        loop {
            let missing: Vec<usize> = (0..self.world_size())
                .filter(|&r| r != self.rank() && !self.store.check(&key(r)).unwrap_or(false))
                .collect();
            if missing.is_empty() {
                return "every rank is still running (a timeout, or a transport fault)".into();
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
                return format!("lost rank {} (it stopped answering)", list.join(", "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every rank registers its world size; rank 0 waits for all the others and compares, the
/// others compare with rank 0's. Gloo would otherwise wait for ranks that will never come.
fn check_world_size(store: &Store, launch: &Launch) -> Result<(), DistError> {
    let key = |r: usize| format!("world_size/{r}");
    let unreachable = |message: String| DistError::Unreachable {
        rank: launch.rank,
        address: launch.store_address(),
        timeout_s: launch.timeout.as_secs(),
        message: first_line(&message),
    };
    store
        .set(&key(launch.rank), launch.world_size.to_string().as_bytes())
        .map_err(unreachable)?;
    let others: Vec<usize> = if launch.rank == 0 {
        (1..launch.world_size).collect()
    } else {
        vec![0]
    };
    let deadline = Instant::now() + launch.timeout;
    loop {
        let mut missing = Vec::new();
        for &r in &others {
            if !store.check(&key(r)).map_err(unreachable)? {
                missing.push(r);
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DistError::Missing {
                rank: launch.rank,
                missing,
                world_size: launch.world_size,
                address: launch.store_address(),
                timeout_s: launch.timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in others {
        let value = store.get(&key(r)).map_err(unreachable)?;
        let theirs = String::from_utf8_lossy(&value)
            .parse::<usize>()
            .unwrap_or(0);
        if theirs != launch.world_size {
            return Err(DistError::WorldSizeMismatch {
                rank: launch.rank,
                world_size: launch.world_size,
                other_rank: r,
                other_world_size: theirs,
            });
        }
    }
    Ok(())
}

fn store_error(launch: &Launch, message: String) -> DistError {
    let address = launch.store_address();
    let in_use = message.contains("EADDRINUSE") || message.contains("address already in use");
    if launch.serves_store() {
        let message = if in_use {
            "the port is in use (another job on this node? choose another MASTER_PORT)".into()
        } else {
            first_line(&message)
        };
        return DistError::Serve {
            rank: launch.rank,
            address,
            message,
        };
    }
    DistError::Unreachable {
        rank: launch.rank,
        address,
        timeout_s: launch.timeout.as_secs(),
        message: first_line(&message),
    }
}

/// The first non-empty line of a c10d message, trimmed.
fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_string()
}
