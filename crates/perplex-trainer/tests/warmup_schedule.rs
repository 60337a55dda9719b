//! BB2-09 (warm-up gives lr 0 at step 0; cosine tail misplaced), through the trainer: the lr
//! logged at every step of a 14-step run with the pitfall's `warmup_cosine`, the parameter
//! change at step 0, and a run resumed mid-schedule.
mod common;

use perplex_trainer::Trainer;

/// The pitfall's `[schedule]`: warm-up 4, cosine to 1e-4 at step 12 (`lr = 1e-3`).
const SCHEDULE: &str = r#"
[schedule]
type = "warmup_cosine"
warmup_steps = 4
total_steps = 12
min_lr = 1e-4
"#;

/// lr of 0-based steps 0..13, computed in Python from `get_lr` of
/// `shared/reference/pytorch_gpt_lm.py` (nanoGPT: `lr·(it+1)/(w+1)` during warm-up, `min_lr`
/// after `lr_decay_iters`).
const EXPECTED: [f64; 14] = [
    2e-4,
    4e-4,
    6e-4,
    8e-4,
    1e-3,
    9.657458e-4,
    8.681981e-4,
    7.222075e-4,
    5.5e-4,
    3.777925e-4,
    2.318019e-4,
    1.342542e-4,
    1e-4,
    1e-4,
];

#[test]
fn bb2_09_logged_lr_follows_the_warmup_cosine_and_resume_continues_it() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = |run: &str, steps: u64| {
        common::tiny_gpt_config(dir.path(), run, SCHEDULE, &format!("max_steps = {steps}"))
    };
    Trainer::from_config(config("straight", 14))
        .unwrap()
        .fit()
        .unwrap();
    let straight = common::train_log(&dir.path().join("straight"), "lr");
    assert_eq!(straight.len(), 14);
    for (k, ((step, lr), want)) in straight.iter().zip(EXPECTED).enumerate() {
        assert_eq!(*step, k as u64 + 1);
        assert!(
            ((lr - want) / want).abs() < 1e-6,
            "step {k}: lr {lr}, expected {want}"
        );
        assert!(*lr >= 1e-4, "step {k}: lr {lr} below min_lr");
    }
    assert_eq!(
        straight[12].1, 1e-4,
        "step 12 (total_steps) is exactly min_lr"
    );

    // Stopped after step 7 (0-based steps 0..6 taken), resumed to 14.
    Trainer::from_config(config("resumed", 7))
        .unwrap()
        .fit()
        .unwrap();
    let run = dir.path().join("resumed");
    Trainer::resume(
        &run.display().to_string(),
        dir.path(),
        &["trainer.max_steps=14".into()],
    )
    .unwrap()
    .fit()
    .unwrap();
    let resumed = common::train_log(&run, "lr");
    assert_eq!(resumed.len(), 14);
    for ((sa, a), (sb, b)) in straight.iter().zip(&resumed) {
        assert_eq!(sa, sb);
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "step {sa}: lr {a} vs {b} after resume"
        );
    }
}

#[test]
fn bb2_09_the_first_warmup_step_changes_every_parameter() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::from_config(common::tiny_gpt_config(
        dir.path(),
        "one",
        SCHEDULE,
        "max_steps = 1",
    ))
    .unwrap();
    let before: Vec<(String, tch::Tensor)> = t
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.copy()))
        .collect();
    t.fit().unwrap();
    let after = t.var_store().variables();
    for (name, old) in &before {
        let delta = (&after[name] - old).abs().max().double_value(&[]);
        assert!(delta > 0.0, "{name} did not change at step 0");
    }
    let lr = common::train_log(&dir.path().join("one"), "lr");
    assert_eq!(lr.len(), 1);
    assert!(lr[0].1 > 0.0);
}
