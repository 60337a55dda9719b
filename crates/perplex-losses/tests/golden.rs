//! Every case of `tests/data/losses.json` (a copy of `shared/golden/losses.json`: PyTorch,
//! float64): value and gradients, in float64 (to 1e-9) and float32 (to 1e-5 relative, 1e-6
//! absolute).
mod common;

use perplex_losses::{Loss, LossInput};
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

use common::{max_abs_diff, to_vec};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/losses.json");

/// The golden file, with Python's `-Infinity`/`Infinity`/`NaN` (not JSON) turned into strings.
fn load() -> Vec<Value> {
    // A missing file fails: golden tests never pass by skipping.
    let text =
        std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("golden file {GOLDEN}: {e}"));
    let text = text
        .replace("-Infinity", "\"-inf\"")
        .replace("Infinity", "\"inf\"")
        .replace("NaN", "\"nan\"");
    let v: Value = serde_json::from_str(&text).expect("golden file parses");
    let cases = v["cases"].as_array().expect("cases").clone();
    assert_eq!(cases.len(), 22, "the golden file holds 22 cases");
    cases
}

/// A number, or one of the strings "nan", "inf", "-inf".
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other}"),
    }
}

fn flatten(v: &Value, shape: &mut Vec<i64>, depth: usize, out: &mut Vec<f64>) {
    match v {
        Value::Array(a) => {
            if shape.len() == depth {
                shape.push(a.len() as i64);
            }
            for x in a {
                flatten(x, shape, depth + 1, out);
            }
        }
        x => out.push(num(x)),
    }
}

fn tensor(v: &Value, kind: Kind) -> Tensor {
    let (mut shape, mut data) = (Vec::new(), Vec::new());
    flatten(v, &mut shape, 0, &mut data);
    Tensor::from_slice(&data).reshape(&shape[..]).to_kind(kind)
}

fn leaf(v: &Value, kind: Kind) -> Tensor {
    tensor(v, kind).set_requires_grad(true)
}

/// Largest error measured over the cases, for the report.
#[derive(Default)]
struct Worst {
    value_abs: f64,
    value_rel: f64,
    grad_abs: f64,
}

/// Checks `got` against `expected` elementwise: `|got - exp| <= rtol · |exp| + atol`, NaN and
/// infinities must match exactly. Returns the largest absolute and relative differences.
fn check(got: &Tensor, expected: &Tensor, rtol: f64, atol: f64, what: &str) -> (f64, f64) {
    assert_eq!(got.size(), expected.size(), "{what}: shape");
    let (g, e) = (to_vec(got), to_vec(expected));
    let (mut abs, mut rel) = (0.0f64, 0.0f64);
    for (i, (x, y)) in g.iter().zip(&e).enumerate() {
        if y.is_nan() {
            assert!(x.is_nan(), "{what}[{i}]: {x}, expected NaN");
            continue;
        }
        if y.is_infinite() || x == y {
            assert_eq!(x, y, "{what}[{i}]");
            continue;
        }
        let d = (x - y).abs();
        assert!(
            d <= rtol * y.abs() + atol,
            "{what}[{i}]: got {x}, expected {y} (diff {d:e})"
        );
        abs = abs.max(d);
        rel = rel.max(d / y.abs().max(1e-300));
    }
    (abs, rel)
}

/// Runs one case in `kind`; returns (value abs diff, value rel diff, grad abs diff).
fn run_case(case: &Value, kind: Kind, extra: &[(&str, Value)]) -> (f64, f64, f64) {
    let name = case["name"].as_str().unwrap();
    let loss_name = case["loss"].as_str().unwrap();
    let inputs = &case["inputs"];
    let mut cfg: Map<String, Value> = case["options"].as_object().unwrap().clone();
    cfg.remove("note");
    cfg.insert("type".into(), Value::String(loss_name.into()));
    for (k, v) in extra {
        cfg.insert((*k).into(), v.clone());
    }
    let loss: Box<dyn Loss> = serde_json::from_value(Value::Object(cfg))
        .unwrap_or_else(|e| panic!("{name}: options do not deserialise: {e}"));
    let (rtol, atol) = if kind == Kind::Double {
        (1e-9, 1e-9)
    } else {
        (1e-5, 1e-6)
    };
    let what = format!("{name} ({kind:?}, {extra:?})");

    // Leaves whose gradient the case gives, by the golden file's names.
    let mut leaves: Vec<(&str, Tensor)> = Vec::new();
    let int_targets = |key: &str| tensor(&inputs[key], Kind::Int64);
    let out = match loss_name {
        "softmax_cross_entropy" | "z_loss" | "focal" => {
            let logits = leaf(&inputs["logits"], kind);
            let targets = if inputs.get("target_probs").is_some() {
                tensor(&inputs["target_probs"], kind)
            } else {
                int_targets("targets")
            };
            let out = loss
                .forward(&LossInput::from_logits(&logits, &targets))
                .unwrap();
            leaves.push(("logits", logits));
            out
        }
        "cross_entropy" => {
            // probs = softmax(logits); the gradient is w.r.t. the logits through the softmax.
            let logits = leaf(&inputs["logits"], kind);
            let probs = logits.softmax(-1, kind);
            let given = tensor(&inputs["probs"], kind);
            assert!(
                max_abs_diff(&probs, &given) < if kind == Kind::Double { 1e-15 } else { 1e-6 },
                "{what}: probs != softmax(logits)"
            );
            let targets = int_targets("targets");
            let out = loss
                .forward(&LossInput::from_probs(&probs, &targets))
                .unwrap();
            leaves.push(("logits", logits));
            out
        }
        "nll" => {
            let lp = leaf(&inputs["log_probs"], kind);
            let targets = int_targets("targets");
            let out = loss
                .forward(&LossInput::from_log_probs(&lp, &targets))
                .unwrap();
            leaves.push(("log_probs", lp));
            out
        }
        "distillation_kl" => {
            let logits = leaf(&inputs["logits"], kind);
            let teacher = tensor(&inputs["teacher_logits"], kind);
            // The case has no targets: every row counts.
            let targets = Tensor::zeros([logits.size()[0]], (Kind::Int64, tch::Device::Cpu));
            let out = loss
                .forward(&LossInput::from_logits(&logits, &targets).with_teacher_logits(&teacher))
                .unwrap();
            leaves.push(("logits", logits));
            out
        }
        "linear_cross_entropy" => {
            let h = leaf(&inputs["hidden"], kind);
            let w = leaf(&inputs["weight"], kind);
            let b = leaf(&inputs["bias"], kind);
            let targets = int_targets("targets");
            let out = loss
                .forward(&LossInput::from_hidden(&h, &w, Some(&b), &targets))
                .unwrap();
            leaves.push(("hidden", h));
            leaves.push(("weight", w));
            leaves.push(("bias", b));
            out
        }
        other => panic!("{name}: no runner for loss {other}"),
    };

    // Value: a number (possibly "nan"/"inf") or a per-element list.
    let expected = tensor(&case["expected"], Kind::Double);
    let (vabs, vrel) = check(&out.loss, &expected, rtol, atol, &format!("{what} value"));
    assert_eq!(out.loss.kind(), kind, "{what}: loss dtype");

    // Gradients of the loss (of the sum of its elements for `none`).
    out.loss.sum(out.loss.kind()).backward();
    let mut gabs = 0.0f64;
    for (key, t) in &leaves {
        let want = tensor(&case["grad"][*key], Kind::Double);
        let got = t.grad();
        let got = if got.defined() { got } else { t.zeros_like() };
        let (a, _) = check(&got, &want, rtol, atol, &format!("{what} grad[{key}]"));
        gabs = gabs.max(a);
    }
    (vabs, vrel, gabs)
}

fn run_all(kind: Kind) {
    let cases = load();
    assert_eq!(cases.len(), 22, "golden case count");
    let mut worst = Worst::default();
    for case in &cases {
        let mut variants: Vec<Vec<(&str, Value)>> = vec![vec![]];
        if case["loss"] == "linear_cross_entropy" {
            // Several chunkings of the 9 tokens: one per chunk, uneven, all in one.
            for c in [1, 2, 4, 9] {
                variants.push(vec![("chunk_size", Value::from(c))]);
            }
        }
        for extra in &variants {
            let (va, vr, ga) = run_case(case, kind, extra);
            println!(
                "{kind:?} {:28} value |diff| {va:.3e} (rel {vr:.3e}), grad max |diff| {ga:.3e}",
                case["name"].as_str().unwrap()
            );
            worst.value_abs = worst.value_abs.max(va);
            worst.value_rel = worst.value_rel.max(vr);
            worst.grad_abs = worst.grad_abs.max(ga);
        }
    }
    println!(
        "{kind:?}: worst value |diff| {:.3e} (rel {:.3e}), worst grad |diff| {:.3e}",
        worst.value_abs, worst.value_rel, worst.grad_abs
    );
}

#[test]
fn golden_float64() {
    run_all(Kind::Double);
}

#[test]
fn golden_float32() {
    run_all(Kind::Float);
}
