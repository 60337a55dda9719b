//! The crate's one error type: every message is one line that names the variable, address or
//! rank concerned.

/// What went wrong setting up or running a process group.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The crate was compiled without the c10d bridge (Gloo's headers were missing).
    #[error(
        "perplex was built without c10d (install libgloo-dev: `apt-get install libgloo-dev`, \
         then rebuild), so it can only train in one process"
    )]
    NotBuilt,

    /// A launcher variable is missing or invalid.
    #[error("{}", describe_env(.variable, .value.as_deref(), .message))]
    Env {
        /// The variable's name, e.g. `WORLD_SIZE`.
        variable: String,
        /// Its value, when it is set.
        value: Option<String>,
        /// What is wrong with it.
        message: String,
    },

    /// This process could not serve the store (the port is taken, the address is not local).
    #[error("rank {rank} cannot serve the store at {address}: {message}")]
    Serve {
        /// This process's rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        address: String,
        /// Why, in words.
        message: String,
    },

    /// The store could not be reached, or did not answer within the timeout.
    #[error(
        "rank {rank}: the store at {address} could not be reached within {timeout_s} s ({message})"
    )]
    Unreachable {
        /// This process's rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        address: String,
        /// The timeout (`PERPLEX_DIST_TIMEOUT_S`).
        timeout_s: u64,
        /// c10d's message.
        message: String,
    },

    /// The processes of one job disagree on the number of processes.
    #[error(
        "rank {rank} has WORLD_SIZE={world_size} but rank {other_rank} has \
         WORLD_SIZE={other_world_size}: launch every process with the same WORLD_SIZE"
    )]
    WorldSizeMismatch {
        /// This process's rank.
        rank: usize,
        /// This process's world size.
        world_size: usize,
        /// The rank that disagrees.
        other_rank: usize,
        /// Its world size.
        other_world_size: usize,
    },

    /// Not every rank joined within the timeout.
    #[error(
        "rank {rank}: rank(s) {missing:?} of {world_size} did not join at {address} within \
         {timeout_s} s (were they started, with the same MASTER_ADDR and MASTER_PORT?)"
    )]
    Missing {
        /// This process's rank.
        rank: usize,
        /// The ranks that never registered.
        missing: Vec<usize>,
        /// The job's world size.
        world_size: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        address: String,
        /// The timeout (`PERPLEX_DIST_TIMEOUT_S`).
        timeout_s: u64,
    },

    /// A collective failed: a process was lost, or it timed out.
    #[error("{operation} failed on rank {rank} of {world_size}: {cause} ({message})")]
    Collective {
        /// `all_reduce`, `broadcast`, `all_gather`, `barrier` or `process group setup`.
        operation: &'static str,
        /// This process's rank.
        rank: usize,
        /// The job's world size.
        world_size: usize,
        /// Which ranks were lost, as far as the store can tell.
        cause: String,
        /// Gloo's message.
        message: String,
    },

    /// A tensor operation around a collective failed.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

impl DistError {
    pub(crate) fn env(variable: &str, value: Option<&str>, message: &str) -> Self {
        Self::Env {
            variable: variable.into(),
            value: value.map(Into::into),
            message: message.into(),
        }
    }
}

fn describe_env(variable: &str, value: Option<&str>, message: &str) -> String {
    match value {
        Some(v) => format!("{variable}={v:?}: {message}"),
        None => format!("{variable} {message}"),
    }
}

impl From<DistError> for perplex_trainer::TrainerError {
    fn from(e: DistError) -> Self {
        Self::Distributed(Box::new(e))
    }
}
