//! Who this process is in a data-parallel job, from the launcher's environment: torchrun's
//! (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`), else Slurm's (`SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` exported by the job script).
use std::time::Duration;

use crate::DistError;

/// The store timeout when `PERPLEX_DIST_TIMEOUT_S` is not set (seconds).
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// The rendezvous port when neither torchrun nor the job script sets `MASTER_PORT` (Slurm).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in the job and where the job's store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, from 0.
    pub rank: usize,
    /// Rank on this node (which device to use on a multi-GPU node).
    pub local_rank: usize,
    /// Number of processes in the job.
    pub world_size: usize,
    /// Number of processes on this node.
    pub local_world_size: usize,
    /// The store's host (`MASTER_ADDR`).
    pub master_addr: String,
    /// The store's port (`MASTER_PORT`).
    pub master_port: u16,
    /// torchrun's agent already serves the store (`TORCHELASTIC_USE_AGENT_STORE=True`): every
    /// rank is a client. Otherwise rank 0 serves it.
    pub agent_store: bool,
    /// torchrun's restart count: each attempt of an elastic job uses its own keys.
    pub restart_count: u64,
    /// How long connecting and each collective may wait (`PERPLEX_DIST_TIMEOUT_S`, default 300).
    pub timeout: Duration,
}

impl Launch {
    /// The launch described by this process's environment; `None` when no launcher set one
    /// (neither `WORLD_SIZE` nor `SLURM_NTASKS`).
    ///
    /// # Errors
    /// [`DistError::Env`] naming the variable that is missing or invalid.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Launch::from_env`], reading variables through `var`.
    ///
    /// # Errors
    /// [`DistError::Env`] naming the variable that is missing or invalid.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let vars = Vars(&var);
        let torchrun = var("WORLD_SIZE").is_some();
        let slurm = var("SLURM_NTASKS").is_some();
        if !torchrun && !slurm {
            return Ok(None);
        }
        let (rank, world_size, local_rank, local_world_size, default_port) = if torchrun {
            let world_size = vars.count("WORLD_SIZE")?;
            let rank = vars.required_index("RANK", "WORLD_SIZE", world_size)?;
            let local_rank = vars.optional("LOCAL_RANK")?.unwrap_or(rank);
            let local_world_size = vars.optional("LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
            (rank, world_size, local_rank, local_world_size, None)
        } else {
            let world_size = vars.count("SLURM_NTASKS")?;
            let rank = vars.required_index("SLURM_PROCID", "SLURM_NTASKS", world_size)?;
            let local_rank = vars.optional("SLURM_LOCALID")?.unwrap_or(0);
            let local_world_size = vars
                .optional("SLURM_NTASKS_PER_NODE")
                .ok()
                .flatten()
                .unwrap_or(world_size);
            (
                rank,
                world_size,
                local_rank,
                local_world_size,
                Some(DEFAULT_PORT),
            )
        };
        let master_addr = match var("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
            Some(a) => a.trim().to_string(),
            None if world_size == 1 => "127.0.0.1".into(),
            None => {
                return Err(DistError::env(
                    "MASTER_ADDR",
                    None,
                    "is not set: it names the host of rank 0 (torchrun sets it; under Slurm, \
                     export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))",
                ))
            }
        };
        let master_port = match (vars.raw("MASTER_PORT"), default_port) {
            (Some(p), _) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    DistError::env("MASTER_PORT", Some(&p), "must be a port number, 1 to 65535")
                })?,
            (None, Some(port)) => port,
            (None, None) if world_size == 1 => DEFAULT_PORT,
            (None, None) => {
                return Err(DistError::env(
                    "MASTER_PORT",
                    None,
                    "is not set: it is the port of the job's store (torchrun sets it)",
                ))
            }
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let restart_count = vars.optional("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64;
        let timeout_s = match vars.raw("PERPLEX_DIST_TIMEOUT_S") {
            None => DEFAULT_TIMEOUT_S,
            Some(t) => t
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&t| t > 0)
                .ok_or_else(|| {
                    DistError::env(
                        "PERPLEX_DIST_TIMEOUT_S",
                        Some(&t),
                        "must be a positive number of seconds",
                    )
                })?,
        };
        Ok(Some(Self {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
            timeout: Duration::from_secs(timeout_s),
        }))
    }

    /// Whether this process serves the store: rank 0, unless torchrun's agent serves it.
    pub fn serves_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn store_address(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    fn optional(&self, name: &str) -> Result<Option<usize>, DistError> {
        self.raw(name)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    DistError::env(name, Some(&v), "must be a non-negative whole number")
                })
            })
            .transpose()
    }

    /// A process count: a whole number ≥ 1.
    fn count(&self, name: &str) -> Result<usize, DistError> {
        let v = self.raw(name).unwrap_or_default();
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                DistError::env(
                    name,
                    Some(&v),
                    "must be a whole number of processes, at least 1",
                )
            })
    }

    /// A rank below `world_size`, which must be set.
    fn required_index(
        &self,
        name: &str,
        size_name: &str,
        world_size: usize,
    ) -> Result<usize, DistError> {
        let rank = self.optional(name)?.ok_or_else(|| {
            DistError::env(
                name,
                None,
                &format!("is not set, but {size_name}={world_size} is"),
            )
        })?;
        if rank >= world_size {
            return Err(DistError::env(
                name,
                Some(&rank.to_string()),
                &format!("must be below {size_name}={world_size}"),
            ));
        }
        Ok(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        Launch::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    const TORCHRUN: [(&str, &str); 7] = [
        ("RANK", "1"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29531"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ];

    #[test]
    fn no_launcher_means_one_process() {
        assert_eq!(launch(&[]).unwrap(), None);
    }

    #[test]
    fn torchrun_workers_are_clients_of_the_agent_store() {
        let l = launch(&TORCHRUN).unwrap().unwrap();
        assert_eq!((l.rank, l.local_rank, l.world_size), (1, 1, 2));
        assert_eq!(l.store_address(), "127.0.0.1:29531");
        assert!(l.agent_store && !l.serves_store());
        let mut vars = TORCHRUN.to_vec();
        vars[0] = ("RANK", "0");
        assert!(
            !launch(&vars).unwrap().unwrap().serves_store(),
            "the agent serves it"
        );
        vars.pop();
        assert!(
            launch(&vars).unwrap().unwrap().serves_store(),
            "rank 0 serves it"
        );
    }

    #[test]
    fn slurm_is_read_when_torchrun_variables_are_absent() {
        let l = launch(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "node01"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world_size), (3, 1, 4));
        assert_eq!(l.store_address(), format!("node01:{DEFAULT_PORT}"));
        assert!(!l.serves_store());
    }

    #[test]
    fn bad_variables_are_named_in_one_line() {
        let cases: [(&str, &str, &str); 6] = [
            ("WORLD_SIZE", "0", "WORLD_SIZE=\"0\""),
            ("WORLD_SIZE", "two", "WORLD_SIZE=\"two\""),
            ("RANK", "2", "RANK=\"2\": must be below WORLD_SIZE=2"),
            ("MASTER_PORT", "99999", "MASTER_PORT=\"99999\""),
            ("LOCAL_RANK", "-1", "LOCAL_RANK=\"-1\""),
            (
                "PERPLEX_DIST_TIMEOUT_S",
                "0",
                "PERPLEX_DIST_TIMEOUT_S=\"0\"",
            ),
        ];
        for (name, value, expected) in cases {
            let mut vars = TORCHRUN.to_vec();
            vars.retain(|(k, _)| *k != name);
            vars.push((name, value));
            let e = launch(&vars).unwrap_err().to_string();
            assert!(e.contains(expected), "{name}={value}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for missing in ["RANK", "MASTER_ADDR", "MASTER_PORT"] {
            let vars: Vec<_> = TORCHRUN
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let e = launch(&vars).unwrap_err().to_string();
            assert!(e.contains(&format!("{missing} is not set")), "{e}");
        }
    }
}
