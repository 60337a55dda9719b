//! Parameter groups: a learning-rate scale and a weight decay per group of parameters, as
//! `torch.optim`'s `param_groups` (and nanoGPT's `configure_optimizers`, which decays only
//! tensors of two or more dimensions).
//!
//! Layered on any optimiser as a wrapper ([`GroupedOptimizer`]): each group is the configured
//! optimiser built over its own parameters with the group's options, so no optimiser needs to
//! know about groups. Saved state keeps the per-parameter names (`PARAM.slot`), so a checkpoint
//! reads the same whether groups are used or not.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{NamedParams, OptimError, Optimizer, OptimizerConfig};

/// One group of parameters with its own options (`[[param_groups]]` in a run config).
///
/// A parameter belongs to the first group that takes it; parameters no group takes keep the
/// optimiser's own options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamGroup {
    /// Parameter names this group takes: exact names or patterns with `*` (any characters),
    /// e.g. `"*.bias"`, `"gru.*"`. Default none.
    pub params: Vec<String>,
    /// Also take every parameter with fewer than this many dimensions (2: biases, norm gains;
    /// 0: off). Default 0.
    pub below_dims: usize,
    /// This group's learning rate is the optimiser's (or the schedule's) times this. Default 1.
    pub lr_scale: f64,
    /// This group's weight decay; default: the optimiser's.
    pub weight_decay: Option<f64>,
}

impl Default for ParamGroup {
    fn default() -> Self {
        Self {
            params: Vec::new(),
            below_dims: 0,
            lr_scale: 1.0,
            weight_decay: None,
        }
    }
}

impl ParamGroup {
    /// The usual group for Transformers: no weight decay on tensors of fewer than two
    /// dimensions (biases, LayerNorm gains), as nanoGPT's `configure_optimizers`.
    pub fn no_decay_below_2d() -> Self {
        Self {
            below_dims: 2,
            weight_decay: Some(0.0),
            ..Self::default()
        }
    }

    /// Whether this group takes the parameter `name` of shape `t`.
    pub fn takes(&self, name: &str, t: &Tensor) -> bool {
        t.dim() < self.below_dims || self.params.iter().any(|p| glob(p, name))
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Builds `config`'s optimiser over `params` split into `groups`: each group with a parameter
/// gets its own optimiser, built from `config` with the group's `lr` (scaled) and
/// `weight_decay`. Without a group that takes a parameter this is `config.build(params)`.
///
/// # Errors
/// [`OptimError::InvalidOption`] for a negative or non-finite `lr_scale`, a group weight
/// decay on an optimiser that has none, and the optimiser's own errors.
pub fn build_grouped(
    config: &dyn OptimizerConfig,
    params: NamedParams,
    groups: &[ParamGroup],
) -> Result<Box<dyn Optimizer>, OptimError> {
    for g in groups {
        crate::optimizer::check(
            "param_groups.lr_scale",
            g.lr_scale,
            g.lr_scale.is_finite() && g.lr_scale >= 0.0,
            "a finite lr_scale >= 0 (0 freezes the group)",
        )?;
    }
    let assignment: Vec<Option<usize>> = params
        .iter()
        .map(|(n, t)| groups.iter().position(|g| g.takes(n, t)))
        .collect();
    for (i, g) in groups.iter().enumerate() {
        if !assignment.contains(&Some(i)) {
            tracing::warn!(
                group = i,
                params = ?g.params,
                below_dims = g.below_dims,
                "parameter group {i} takes no parameter (a typo in its names?)"
            );
        }
    }
    if assignment.iter().all(Option::is_none) {
        return config.build(params);
    }
    let all: NamedParams = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut members: Vec<(Option<usize>, NamedParams)> = Vec::new();
    for ((name, t), group) in params.into_iter().zip(assignment) {
        match members.iter_mut().find(|(g, _)| *g == group) {
            Some((_, v)) => v.push((name, t)),
            None => members.push((group, vec![(name, t)])),
        }
    }
    let mut built = Vec::new();
    for (group, params) in members {
        let (scale, optimizer) = match group {
            None => (1.0, config.build(params)?),
            Some(i) => {
                let g = &groups[i];
                (g.lr_scale, variant(config, g)?.build(params)?)
            }
        };
        built.push(Group { scale, optimizer });
    }
    Ok(Box::new(GroupedOptimizer {
        lr: config.lr(),
        groups: built,
        params: all,
    }))
}

/// `config` with a group's learning rate and weight decay, through its own serialised form (so
/// any optimiser, plugins too, gets groups without code of its own).
fn variant(
    config: &dyn OptimizerConfig,
    group: &ParamGroup,
) -> Result<Box<dyn OptimizerConfig>, OptimError> {
    let bad = |value: String, expected: &'static str| OptimError::InvalidOption {
        option: "param_groups",
        value,
        expected,
    };
    let mut value = serde_json::to_value(config).map_err(|e| bad(e.to_string(), "a config"))?;
    let text = value.to_string();
    let fields = value
        .as_object_mut()
        .ok_or_else(|| bad(text, "an optimiser config table"))?;
    fields.insert("lr".into(), serde_json::json!(config.lr() * group.lr_scale));
    if let Some(wd) = group.weight_decay {
        if !fields.contains_key("weight_decay") {
            return Err(bad(
                format!("weight_decay = {wd}"),
                "an optimiser with a weight_decay option",
            ));
        }
        fields.insert("weight_decay".into(), serde_json::json!(wd));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string(), "a valid optimiser config"))
}

#[derive(Debug)]
struct Group {
    scale: f64,
    optimizer: Box<dyn Optimizer>,
}

/// An optimiser per parameter group, stepped together; see [`build_grouped`].
#[derive(Debug)]
pub struct GroupedOptimizer {
    lr: f64,
    groups: Vec<Group>,
    params: NamedParams,
}

impl Optimizer for GroupedOptimizer {
    fn step(&mut self) -> Result<(), OptimError> {
        self.groups.iter_mut().try_for_each(|g| g.optimizer.step())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
        for g in &mut self.groups {
            g.optimizer.set_lr(lr * g.scale);
        }
    }

    fn step_count(&self) -> i64 {
        self.groups[0].optimizer.step_count()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|g| g.optimizer.state())
            .collect()
    }

    fn load_state(
        &mut self,
        state: &[(String, Tensor)],
        step_count: i64,
    ) -> Result<(), OptimError> {
        self.groups
            .iter_mut()
            .try_for_each(|g| g.optimizer.load_state(state, step_count))
    }

    fn params(&self) -> &NamedParams {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::{AdamConfig, AdamWConfig, SgdConfig};

    fn params() -> NamedParams {
        let t = |shape: &[i64], v: f64| {
            Tensor::full(shape, v, (Kind::Double, tch::Device::Cpu)).set_requires_grad(true)
        };
        vec![
            ("gru.bias".into(), t(&[3], 1.0)),
            ("gru.weight".into(), t(&[3, 2], 1.0)),
            ("out.bias".into(), t(&[2], 1.0)),
            ("out.weight".into(), t(&[2, 3], 1.0)),
        ]
    }

    /// Steps `opt` `n` times on the loss `Σ_p Σ (p · (i+1))²`.
    fn train(opt: &mut dyn Optimizer, n: usize) -> Vec<Vec<f64>> {
        for _ in 0..n {
            opt.zero_grad();
            let loss = opt
                .params()
                .iter()
                .enumerate()
                .map(|(i, (_, p))| (p * (i as f64 + 1.0)).square().sum(Kind::Double))
                .fold(
                    Tensor::zeros([], (Kind::Double, tch::Device::Cpu)),
                    |a, b| a + b,
                );
            loss.backward();
            opt.step().unwrap();
        }
        opt.params()
            .iter()
            .map(|(_, p)| Vec::<f64>::try_from(p.flatten(0, -1)).unwrap())
            .collect()
    }

    #[test]
    fn globs_match_names() {
        assert!(glob("*.bias", "gru.bias"));
        assert!(glob("gru.*", "gru.weight_ih_l0"));
        assert!(glob("*weight*", "out.weight"));
        assert!(glob("out.bias", "out.bias"));
        assert!(!glob("*.bias", "gru.bias_hh"));
        assert!(!glob("gru.*", "out.weight"));
    }

    #[test]
    fn groups_equal_to_the_optimiser_give_the_same_steps_bit_for_bit() {
        let config = AdamWConfig::default();
        let plain = train(config.build(params()).unwrap().as_mut(), 5);
        let group = ParamGroup {
            params: vec!["*.bias".into()],
            ..ParamGroup::default()
        };
        let grouped = train(
            build_grouped(&config, params(), &[group]).unwrap().as_mut(),
            5,
        );
        assert_eq!(plain, grouped);
    }

    #[test]
    fn adamw_without_decay_below_two_dims_leaves_biases_undecayed() {
        // Zero gradients: AdamW's update is then the decay alone, θ ← θ(1 - lr·λ).
        let config = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let mut opt = build_grouped(&config, params(), &[ParamGroup::no_decay_below_2d()]).unwrap();
        for (_, p) in opt.params() {
            (p * 0.0).sum(Kind::Double).backward();
        }
        opt.step().unwrap();
        for (name, p) in opt.params() {
            let want = if p.dim() < 2 { 1.0 } else { 1.0 - 0.1 * 0.5 };
            assert_eq!(p.double_value(&vec![0; p.dim()]), want, "{name}");
        }
    }

    #[test]
    fn lr_scale_follows_the_schedule_and_matches_a_plain_optimiser_at_that_lr() {
        let config = SgdConfig {
            lr: 0.1,
            ..SgdConfig::default()
        };
        let group = ParamGroup {
            params: vec!["gru.*".into()],
            lr_scale: 0.5,
            ..ParamGroup::default()
        };
        let mut opt = build_grouped(&config, params(), &[group]).unwrap();
        opt.set_lr(0.04);
        assert_eq!(opt.lr(), 0.04);
        let grouped = train(opt.as_mut(), 1);
        // gru.* stepped at 0.02, out.* at 0.04.
        let mut slow = SgdConfig {
            lr: 0.02,
            ..SgdConfig::default()
        }
        .build(params())
        .unwrap();
        let mut fast = SgdConfig {
            lr: 0.04,
            ..SgdConfig::default()
        }
        .build(params())
        .unwrap();
        let (slow, fast) = (train(slow.as_mut(), 1), train(fast.as_mut(), 1));
        assert_eq!(grouped[..2], slow[..2]);
        assert_eq!(grouped[2..], fast[2..]);
    }

    #[test]
    fn grouped_state_restores_exactly_and_reads_as_ungrouped_state() {
        let config = AdamConfig::default();
        let groups = [ParamGroup::no_decay_below_2d()];
        let mut a = build_grouped(&config, params(), &groups).unwrap();
        train(a.as_mut(), 3);
        let state: Vec<(String, Tensor)> =
            a.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let mut names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let mut plain = config.build(params()).unwrap();
        let mut plain_names: Vec<String> = plain.state().into_iter().map(|(n, _)| n).collect();
        plain_names.sort_unstable();
        assert_eq!(names, plain_names);
        // Same parameters and state in a fresh grouped optimiser: the next steps agree.
        let mut b = build_grouped(&config, params(), &groups).unwrap();
        for ((_, pa), (_, pb)) in a.params().iter().zip(b.params()) {
            tch::no_grad(|| pb.shallow_clone().copy_(pa));
        }
        b.load_state(&state, a.step_count()).unwrap();
        assert_eq!(train(a.as_mut(), 2), train(b.as_mut(), 2));
        plain.load_state(&state, 3).unwrap();
    }

    #[test]
    fn bad_groups_are_named() {
        let bad = ParamGroup {
            lr_scale: -1.0,
            ..ParamGroup::default()
        };
        let e = build_grouped(&AdamConfig::default(), params(), &[bad]).unwrap_err();
        assert!(e.to_string().contains("lr_scale"), "{e}");
    }
}
