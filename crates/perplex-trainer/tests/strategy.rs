//! The data-parallel seam, tested with a strategy that stands for two ranks holding the same
//! batch (pitfall BB2-18 (c)): the gradient is summed over ranks and divided once by the global
//! denominator, so the result equals one process on that batch. Summing without the division
//! doubles the update, dividing twice halves it; both fail here.
mod common;

use perplex_data::Batches;
use perplex_trainer::strategy::Strategy;
use perplex_trainer::{Trainer, TrainerError};
use tch::Tensor;

/// `world_size` ranks that all hold this process's batch: a sum over ranks is `world_size`
/// times the local value.
#[derive(Debug)]
struct Mirror {
    rank: usize,
    world_size: usize,
    /// What `reduce_gradients` multiplies by (the right one is `world_size`).
    gradient_factor: f64,
}

impl Strategy for Mirror {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(t * self.world_size as f64)
    }

    /// Every rank holds this process's batch (not a shard of it).
    fn shard(&self, batches: Box<dyn Batches>) -> Result<Box<dyn Batches>, TrainerError> {
        Ok(batches)
    }

    fn reduce_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        tch::no_grad(|| {
            for (_, p) in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(self.gradient_factor)?;
                }
            }
            Ok(())
        })
    }
}

/// Final weights and the logged step losses of 3 SGD steps with `strategy`.
fn train(dir: &std::path::Path, name: &str, strategy: Option<Mirror>) -> (Vec<f32>, Vec<f64>) {
    let loss = "type = \"softmax_cross_entropy\"\nlabel_smoothing = 0.1";
    let mut cfg = common::tiny_char_config(dir, name, loss, "eval = false");
    cfg.trainer.max_steps = 3;
    cfg.trainer.log_every = 1;
    cfg.optim = serde_json::from_str(r#"{"type": "sgd", "lr": 0.5}"#).unwrap();
    let mut trainer = Trainer::from_config(cfg).unwrap();
    if let Some(s) = strategy {
        trainer = trainer.with_strategy(Box::new(s));
    }
    trainer.fit().unwrap();
    let mut vars: Vec<(String, Tensor)> = trainer.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = vars
        .iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .collect();
    let losses = std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    (weights, losses)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn identical_ranks_step_as_one_process_and_wrong_reductions_do_not() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let (w1, l1) = train(dir.path(), "single", None);
    for world_size in [2, 4] {
        let right = Mirror {
            rank: 0,
            world_size,
            gradient_factor: world_size as f64,
        };
        let (w, l) = train(dir.path(), &format!("mirror-{world_size}"), Some(right));
        assert!(
            max_diff(&w1, &w) < 1e-6,
            "{world_size} ranks: {}",
            max_diff(&w1, &w)
        );
        for (a, b) in l1.iter().zip(&l) {
            assert!(
                (a - b).abs() < 1e-6 * a,
                "{world_size} ranks: losses {l1:?} vs {l:?}"
            );
        }
    }
    // Summing without the global denominator (gradients × 4 instead of × 2 here) or dividing
    // twice (× 1) moves the weights away from the single process's.
    for factor in [4.0, 1.0] {
        let wrong = Mirror {
            rank: 0,
            world_size: 2,
            gradient_factor: factor,
        };
        let (w, _) = train(dir.path(), &format!("wrong-{factor}"), Some(wrong));
        assert!(max_diff(&w1, &w) > 1e-3, "factor {factor} went unnoticed");
    }
}

/// The training loss of one step on rank `rank` (of 2, every rank holding the same batch) of
/// the tiny GRU with `dropout`.
fn first_step_loss(dir: &std::path::Path, name: &str, rank: usize, dropout: f64) -> f64 {
    let loss = "type = \"softmax_cross_entropy\"";
    let _ = common::tiny_char_config(dir, name, loss, "eval = false");
    let cfg = perplex_trainer::RunConfig::load(
        Some(&dir.join(format!("{name}.toml"))),
        &[
            format!("model.dropout={dropout}"),
            "trainer.max_steps=1".into(),
        ],
    )
    .unwrap();
    let strategy = Mirror {
        rank,
        world_size: 2,
        gradient_factor: 2.0,
    };
    let summary = Trainer::from_config(cfg)
        .unwrap()
        .with_strategy(Box::new(strategy))
        .fit()
        .unwrap();
    assert_eq!(summary.steps, 1);
    summary.epochs[0].train_loss
}

/// Pitfall BB2-17: ranks seeded alike would draw the same dropout masks (N ranks doing one's
/// work). Dropout is seeded from (seed, step, rank): on the same batch, rank 0 and rank 1 get
/// different losses with dropout, equal ones without, and a rank reruns identically.
#[test]
fn ranks_draw_different_dropout_masks_and_the_same_ones_on_a_rerun() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let rank0 = first_step_loss(dir.path(), "dropout-r0", 0, 0.3);
    let rank1 = first_step_loss(dir.path(), "dropout-r1", 1, 0.3);
    let rank1_again = first_step_loss(dir.path(), "dropout-r1-again", 1, 0.3);
    assert_ne!(rank0, rank1, "ranks 0 and 1 drew the same dropout masks");
    assert_eq!(rank1, rank1_again, "a rerun of rank 1 drew other masks");
    let plain0 = first_step_loss(dir.path(), "plain-r0", 0, 0.0);
    let plain1 = first_step_loss(dir.path(), "plain-r1", 1, 0.0);
    assert_eq!(plain0, plain1, "without dropout the ranks' losses differ");
}

/// Stands for rank `rank` of 2 holding the whole batch (as [`Mirror`]) and records, at every
/// barrier, the steps of the checkpoints then on disk under `run` (none for a process that
/// writes nothing).
#[derive(Debug)]
struct BarrierRecorder {
    mirror: Mirror,
    run: std::path::PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>,
}

impl Strategy for BarrierRecorder {
    fn rank(&self) -> usize {
        self.mirror.rank()
    }

    fn world_size(&self) -> usize {
        self.mirror.world_size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        self.mirror.all_reduce_sum(t)
    }

    fn shard(&self, batches: Box<dyn Batches>) -> Result<Box<dyn Batches>, TrainerError> {
        self.mirror.shard(batches)
    }

    fn reduce_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        self.mirror.reduce_gradients(params)
    }

    fn barrier(&self) -> Result<(), TrainerError> {
        let mut steps: Vec<u64> = std::fs::read_dir(self.run.join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
            .collect();
        steps.sort();
        self.seen.lock().unwrap().push(steps);
        Ok(())
    }
}

/// Only rank 0 writes checkpoints, and every rank waits at a barrier after each one, rank 0
/// once it is on disk (and once more at the end, after the final weights and summary), so no
/// rank runs ahead of, or exits during, rank 0's writing.
#[test]
fn every_rank_waits_at_a_barrier_after_each_checkpoint_is_written() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let loss = "type = \"softmax_cross_entropy\"";
    let mut seen_by_rank = Vec::new();
    for rank in [0, 1] {
        let name = format!("barrier-r{rank}");
        let mut cfg = common::tiny_char_config(
            dir.path(),
            &name,
            loss,
            "eval = false\neval_every = 2\nkeep_last = 10",
        );
        cfg.trainer.max_steps = 4;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let strategy = BarrierRecorder {
            mirror: Mirror {
                rank,
                world_size: 2,
                gradient_factor: 2.0,
            },
            run: dir.path().join(&name),
            seen: std::sync::Arc::clone(&seen),
        };
        Trainer::from_config(cfg)
            .unwrap()
            .with_strategy(Box::new(strategy))
            .fit()
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        seen_by_rank.push(seen);
    }
    // Checkpoints at steps 2 and 4, then the end of the run.
    assert_eq!(seen_by_rank[0], vec![vec![2], vec![2, 4], vec![2, 4]]);
    // Rank 1 writes nothing but meets rank 0 at each of those barriers.
    assert_eq!(seen_by_rank[1], vec![Vec::<u64>::new(); 3]);
}
