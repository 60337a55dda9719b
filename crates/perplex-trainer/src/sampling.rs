//! Choosing the next token from a model's logits: banned ids, temperature, top-k, top-p
//! (nucleus), and a seeded draw.
use tch::{Device, Kind, Tensor};

use perplex_data::batch::ids_to_tensor;

use crate::TrainerError;

/// How each next token is picked during generation.
///
/// The filters apply in the order of Hugging Face `transformers`' `generate`: banned ids,
/// temperature, top-k, top-p; then a token is drawn from the softmax of what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// Tokens to generate after the prompt. Default 200.
    pub max_tokens: usize,
    /// Logits are divided by this; 0 means greedy (always the most likely token). Default 1.0.
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens; 0 keeps all. Default 0.
    pub top_k: usize,
    /// Nucleus sampling (Holtzman et al. 2019, "The Curious Case of Neural Text
    /// Degeneration"): keep the most likely tokens whose probabilities sum to at least `top_p`,
    /// in `(0, 1]`; 1 keeps all. Default 1.0.
    pub top_p: f64,
    /// Seed of the draws. The generator is the sampler's own (SplitMix64), not libtorch's global
    /// one, so the same seed, model and options give the same text whatever else the process
    /// does. Default 0.
    pub seed: i64,
    /// Vocabulary ids that are never generated (their logits are set to `-inf`). Default none.
    pub banned_ids: Vec<i64>,
    /// Ids that end generation once sampled (kept in the output), as transformers' `generate`
    /// stops at `eos_token_id`: [`crate::LoadedModel::eos_ids`]. Default none.
    pub stop_ids: Vec<i64>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            max_tokens: 200,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            banned_ids: Vec::new(),
            stop_ids: Vec::new(),
        }
    }
}

/// Picks tokens one after the other as [`SamplingOptions`] say.
#[derive(Debug)]
pub struct Sampler {
    options: SamplingOptions,
    banned: Option<Tensor>,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` tokens whose logits live on `device`.
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the option: a negative or non-finite temperature, a
    /// `top_p` outside `(0, 1]`, a banned id outside the vocabulary, every id banned.
    pub fn new(
        options: &SamplingOptions,
        vocab_size: i64,
        device: Device,
    ) -> Result<Self, TrainerError> {
        check(options, vocab_size)?;
        let banned = if options.banned_ids.is_empty() {
            None
        } else {
            Some(ids_to_tensor(&options.banned_ids).f_to_device(device)?)
        };
        Ok(Self {
            options: options.clone(),
            banned,
            rng: SplitMix64(options.seed as u64),
        })
    }

    /// The next token id given the logits `[vocab]` of the last position.
    ///
    /// # Errors
    /// libtorch errors (a `logits` of the wrong shape).
    pub fn next(&mut self, logits: &Tensor) -> Result<i64, TrainerError> {
        let o = &self.options;
        // Double: a temperature below float32's range (1e-300) must not round to 0.
        let mut logits = logits.f_to_kind(Kind::Double)?;
        if let Some(b) = &self.banned {
            logits = logits.f_index_fill(0, b, f64::NEG_INFINITY)?;
        }
        if o.temperature == 0.0 {
            return Ok(logits.f_argmax(0, false)?.int64_value(&[]));
        }
        // Shifted so that the largest logit is 0 first: a tiny temperature then sends the
        // others to -inf instead of overflowing every logit to ±inf (a NaN softmax).
        logits = logits
            .f_sub(&logits.f_max()?)?
            .f_div_scalar(o.temperature)?;
        let vocab = logits.size()[0];
        if o.top_k > 0 && (o.top_k as i64) < vocab {
            let (values, _) = logits.f_topk(o.top_k as i64, 0, true, true)?;
            let kth = values.f_select(0, o.top_k as i64 - 1)?;
            logits = logits.f_masked_fill(&logits.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
        }
        if o.top_p < 1.0 {
            let (sorted, order) = logits.f_sort(0, true)?;
            let probs = sorted.f_softmax(0, Kind::Float)?;
            // Drop a token once the tokens more likely than it reach top_p; the most likely
            // token always stays.
            let before = probs.f_cumsum(0, Kind::Float)?.f_sub(&probs)?;
            let kept = sorted.f_masked_fill(&before.f_ge(o.top_p)?, f64::NEG_INFINITY)?;
            logits = logits.f_scatter(0, &order, &kept)?;
        }
        let probs = Vec::<f64>::try_from(
            logits
                .f_softmax(0, Kind::Double)?
                .f_to_device(Device::Cpu)?,
        )?;
        Ok(draw(&probs, self.rng.uniform()) as i64)
    }
}

/// Inverse-CDF draw: the first index whose cumulative probability exceeds `u · Σ probs`
/// (`u` in `[0, 1)`); zero-probability indices are never chosen.
fn draw(probs: &[f64], u: f64) -> usize {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_possible = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p;
            last_possible = i;
            if cumulative > target {
                return i;
            }
        }
    }
    // Rounding left `target` at the very top: the last token that could be drawn.
    last_possible
}

/// SplitMix64 (Steele, Lea and Flood 2014, as in `java.util.SplittableRandom`): a tiny,
/// well-mixed generator, enough for drawing tokens.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn check(o: &SamplingOptions, vocab_size: i64) -> Result<(), TrainerError> {
    let bad = |option: &str, message: String| TrainerError::InvalidOption {
        option: option.into(),
        message,
    };
    if o.temperature.is_nan() || o.temperature < 0.0 || o.temperature.is_infinite() {
        return Err(bad(
            "temperature",
            format!("{} is not a finite number >= 0 (0 = greedy)", o.temperature),
        ));
    }
    if o.top_p.is_nan() || o.top_p <= 0.0 || o.top_p > 1.0 {
        return Err(bad(
            "top_p",
            format!("{} is not in (0, 1] (1 = no nucleus filtering)", o.top_p),
        ));
    }
    if let Some(id) = o
        .banned_ids
        .iter()
        .find(|&&i| !(0..vocab_size).contains(&i))
    {
        return Err(bad(
            "banned ids",
            format!("id {id} is not in the vocabulary (ids 0..{vocab_size})"),
        ));
    }
    let mut distinct = o.banned_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() as i64 >= vocab_size {
        return Err(bad(
            "banned ids",
            format!("all {vocab_size} ids are banned: nothing is left to generate"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(o: SamplingOptions) -> Sampler {
        Sampler::new(&o, 4, Device::Cpu).unwrap()
    }

    /// Softmax of these logits: ≈ [0.024, 0.479, 0.065, 0.433] (ids 1 and 3 hold 0.91).
    fn logits() -> Tensor {
        Tensor::from_slice(&[0.0f32, 3.0, 1.0, 2.9])
    }

    fn counts(s: &mut Sampler, n: usize) -> [usize; 4] {
        let mut c = [0; 4];
        for _ in 0..n {
            c[s.next(&logits()).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn same_seed_draws_the_same_sequence() {
        let draws = |seed| {
            let mut s = sampler(SamplingOptions {
                seed,
                ..Default::default()
            });
            (0..50)
                .map(|_| s.next(&logits()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(9), draws(9));
        assert_ne!(draws(9), draws(10));
    }

    #[test]
    fn draws_follow_the_softmax() {
        let c = counts(&mut sampler(SamplingOptions::default()), 4000);
        // Expected ≈ [95, 1914, 259, 1732]; the bounds are about 4 standard deviations.
        assert!(c[0] > 55 && c[0] < 135, "{c:?}");
        assert!(c[1] > 1790 && c[1] < 2040, "{c:?}");
        assert!(c[2] > 195 && c[2] < 325, "{c:?}");
    }

    #[test]
    fn banned_ids_are_never_drawn() {
        let c = counts(
            &mut sampler(SamplingOptions {
                banned_ids: vec![1, 3],
                ..Default::default()
            }),
            500,
        );
        assert_eq!((c[1], c[3]), (0, 0), "{c:?}");
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_likeliest() {
        let c = counts(
            &mut sampler(SamplingOptions {
                top_k: 2,
                ..Default::default()
            }),
            500,
        );
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        let c = counts(
            &mut sampler(SamplingOptions {
                top_p: 0.6,
                ..Default::default()
            }),
            500,
        );
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        let c = counts(
            &mut sampler(SamplingOptions {
                top_p: 1e-6,
                ..Default::default()
            }),
            100,
        );
        assert_eq!(c, [0, 100, 0, 0]);
    }

    #[test]
    fn zero_temperature_is_greedy() {
        let c = counts(
            &mut sampler(SamplingOptions {
                temperature: 0.0,
                banned_ids: vec![1],
                ..Default::default()
            }),
            20,
        );
        assert_eq!(c, [0, 0, 0, 20]);
    }

    #[test]
    fn a_tiny_temperature_is_greedy_not_nan() {
        let c = counts(
            &mut sampler(SamplingOptions {
                temperature: 1e-300,
                banned_ids: vec![1],
                ..Default::default()
            }),
            20,
        );
        assert_eq!(c, [0, 0, 0, 20]);
    }

    #[test]
    fn draw_never_picks_a_zero_probability() {
        assert_eq!(draw(&[0.0, 0.5, 0.0, 0.5], 0.0), 1);
        assert_eq!(draw(&[0.0, 0.5, 0.0, 0.5], 0.7), 3);
        assert_eq!(draw(&[0.0, 0.5, 0.5, 0.0], 0.999_999_999_999), 2);
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let new = |o: SamplingOptions| Sampler::new(&o, 4, Device::Cpu).unwrap_err().to_string();
        let e = new(SamplingOptions {
            banned_ids: vec![4],
            ..Default::default()
        });
        assert!(e.contains("id 4 is not in the vocabulary"), "{e}");
        let e = new(SamplingOptions {
            banned_ids: vec![0, 1, 2, 3],
            ..Default::default()
        });
        assert!(e.contains("all 4 ids are banned"), "{e}");
        let e = new(SamplingOptions {
            temperature: -1.0,
            ..Default::default()
        });
        assert!(e.contains("temperature"), "{e}");
        let e = new(SamplingOptions {
            top_p: 0.0,
            ..Default::default()
        });
        assert!(e.contains("top_p"), "{e}");
    }
}
