//! Optimiser trajectories and learning-rate schedules against `torch.optim` (float64), from
//! `tests/data/optim.json`, a copy of `shared/golden/optim.json` written by
//! `shared/reference/golden_optim.py` (PyTorch's output, kept in the repository so that a fresh
//! clone runs these tests).
use std::path::PathBuf;

use perplex_optim::{LrSchedule, OptimizerConfig, ScheduleConfig};
use serde_json::Value;
use tch::{Kind, Tensor};

/// Optimiser parameters after each step and the loss before it agree to this (absolute).
const OPTIM_TOL: f64 = 1e-10;
/// Learning rates agree to this (absolute).
const SCHEDULE_TOL: f64 = 1e-12;

/// The golden file (a missing file fails the test: golden tests never pass by skipping).
fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/optim.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    serde_json::from_str(&text).expect("optim.json is valid JSON")
}

/// A float64 tensor from a (nested) JSON array of numbers.
fn tensor(v: &Value) -> Tensor {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<i64>, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len() as i64);
                }
                for item in items {
                    walk(item, depth + 1, shape, out);
                }
            }
            _ => out.push(v.as_f64().expect("a number")),
        }
    }
    let (mut shape, mut data) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut data);
    Tensor::from_slice(&data).view(shape.as_slice())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// `{"type": name, ...options}` without the keys that describe the test rather than the
/// config.
fn typed(name: &str, options: &Value, drop: &[&str]) -> Value {
    let mut obj = options.as_object().expect("options is an object").clone();
    for key in drop {
        obj.remove(*key);
    }
    obj.insert("type".into(), Value::String(name.into()));
    Value::Object(obj)
}

#[test]
fn optimizers_follow_torch_trajectories_in_float64() {
    let golden = golden();
    let problem = &golden["problem"];
    let x = tensor(&problem["x"]);
    let c = tensor(&problem["c"]);
    let cases = golden["optimizers"].as_array().expect("optimizers");
    assert!(!cases.is_empty());
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["optimizer"].as_str().expect("optimizer name");
        let label = format!("{name} {}", case["options"]);
        let config: Box<dyn OptimizerConfig> =
            serde_json::from_value(typed(name, &case["options"], &[]))
                .unwrap_or_else(|e| panic!("{label}: options do not deserialise: {e}"));
        let w = tensor(&problem["w0"]).set_requires_grad(true);
        let b = tensor(&problem["b0"]).set_requires_grad(true);
        let mut opt = config
            .build(vec![
                ("b".into(), b.shallow_clone()),
                ("w".into(), w.shallow_clone()),
            ])
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut case_worst = 0.0f64;
        for (k, expected) in case["trajectory"]
            .as_array()
            .expect("trajectory")
            .iter()
            .enumerate()
        {
            let loss = ((x.matmul(&w) + &b).tanh().square() * &c).sum(Kind::Double);
            let loss_diff = (loss.double_value(&[])
                - expected["loss_before_step"].as_f64().expect("loss"))
            .abs();
            loss.backward();
            opt.step()
                .unwrap_or_else(|e| panic!("{label}: step {k}: {e}"));
            opt.zero_grad();
            let w_diff = max_abs_diff(&w, &tensor(&expected["w"]));
            let b_diff = max_abs_diff(&b, &tensor(&expected["b"]));
            let diff = loss_diff.max(w_diff).max(b_diff);
            assert!(
                diff <= OPTIM_TOL,
                "{label}: step {}: loss differs by {loss_diff:e}, w by {w_diff:e}, b by {b_diff:e}",
                k + 1
            );
            case_worst = case_worst.max(diff);
        }
        assert_eq!(opt.step_count(), 12);
        println!("{label}: max abs difference {case_worst:e}");
        worst = worst.max(case_worst);
    }
    println!(
        "{} optimiser cases, max abs difference {worst:e}",
        cases.len()
    );
}

#[test]
fn schedules_follow_torch_learning_rates() {
    let golden = golden();
    let base_lr = golden["base_lr"].as_f64().expect("base_lr");
    let cases = golden["schedules"].as_array().expect("schedules");
    assert!(!cases.is_empty());
    let mut worst = 0.0f64;
    for case in cases {
        let golden_name = case["schedule"].as_str().expect("schedule name");
        // The golden file names torch's class (CosineAnnealingLR); users write `cosine`.
        let name = match golden_name {
            "cosine_annealing" => "cosine",
            other => other,
        };
        let label = format!("{name} {}", case["options"]);
        // `formula` documents the lambda and `metrics` feeds the validations: neither is an
        // option.
        let mut options = typed(name, &case["options"], &["formula", "metrics"]);
        // The golden warm-ups are `transformers`' (`k / w`), not perplex's default (nanoGPT's).
        if name.starts_with("warmup_") {
            options["warmup_rule"] = "transformers".into();
        }
        let config: Box<dyn ScheduleConfig> = serde_json::from_value(options)
            .unwrap_or_else(|e| panic!("{label}: options do not deserialise: {e}"));
        let mut schedule = config
            .build(base_lr)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let metrics = case["options"]["metrics"].as_array();
        let mut case_worst = 0.0f64;
        for (k, expected) in case["lr"].as_array().expect("lr").iter().enumerate() {
            let expected = expected.as_f64().expect("lr value");
            let got = schedule.lr(k as i64);
            let diff = (got - expected).abs();
            assert!(
                diff <= SCHEDULE_TOL,
                "{label}: step {k}: lr {got} but torch has {expected}"
            );
            case_worst = case_worst.max(diff);
            if let Some(metrics) = metrics {
                schedule.on_validation(metrics[k].as_f64().expect("metric"));
            }
        }
        println!("{label}: max abs difference {case_worst:e}");
        worst = worst.max(case_worst);
    }
    println!("{} schedules, max abs difference {worst:e}", cases.len());
}
