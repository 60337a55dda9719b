//! Reading a run's `metrics.jsonl` into series to plot.
//!
//! Each line is a JSON object. Lines with a `"kind"` field: `train` (`step`, `loss`, `lr`),
//! `valid` (`step`, `loss`, `perplexity`), `epoch` (`step`, `train_loss`, `lr`, nested `valid`),
//! `test` (`step`, `loss` or nested `test`). Lines without `"kind"` are the older format: epoch
//! summaries (`step`, `train_loss`, `lr`, nested `valid`) and `{"split": "test", "test": {..}}`.
//! Unknown kinds, missing fields and unreadable lines are skipped and counted.

/// `(step, value)` series read from a metrics file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricsLog {
    /// Training loss every `log_every` steps (`train` lines).
    pub train_loss: Vec<(f64, f64)>,
    /// Mean training loss of each epoch (epoch summaries).
    pub epoch_train_loss: Vec<(f64, f64)>,
    /// Validation loss, nats per token (`valid` lines, else epoch summaries).
    pub valid_loss: Vec<(f64, f64)>,
    /// Validation perplexity, alongside `valid_loss`.
    pub valid_perplexity: Vec<(f64, f64)>,
    /// Test loss.
    pub test_loss: Vec<(f64, f64)>,
    /// Learning rate (`train` lines, else epoch summaries).
    pub lr: Vec<(f64, f64)>,
    /// Lines read, blank ones excluded.
    pub lines: usize,
    /// Lines that are not JSON objects.
    pub unreadable: usize,
}

impl MetricsLog {
    /// Whether there is anything to plot.
    pub fn is_empty(&self) -> bool {
        self.train_loss.is_empty()
            && self.epoch_train_loss.is_empty()
            && self.valid_loss.is_empty()
            && self.test_loss.is_empty()
            && self.lr.is_empty()
    }

    /// Parses the text of a `metrics.jsonl` file.
    pub fn parse(text: &str) -> Self {
        let mut log = Self::default();
        let (mut valid_lines, mut valid_epochs) = (Vec::new(), Vec::new());
        let (mut lr_steps, mut lr_epochs) = (Vec::new(), Vec::new());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            log.lines += 1;
            let Ok(serde_json::Value::Object(v)) = serde_json::from_str(line) else {
                log.unreadable += 1;
                continue;
            };
            let num = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
                o.get(k).and_then(serde_json::Value::as_f64)
            };
            let Some(step) = num(&v, "step") else {
                continue;
            };
            let nested = |k: &str| v.get(k).and_then(serde_json::Value::as_object);
            let kind = v.get("kind").and_then(serde_json::Value::as_str);
            let is_test = kind == Some("test")
                || (kind.is_none() && v.get("split").and_then(|s| s.as_str()) == Some("test"));
            match kind {
                Some("train") => {
                    if let Some(loss) = num(&v, "loss") {
                        log.train_loss.push((step, loss));
                    }
                    if let Some(lr) = num(&v, "lr") {
                        lr_steps.push((step, lr));
                    }
                }
                Some("valid") => {
                    if let Some(loss) = num(&v, "loss") {
                        let ppl = num(&v, "perplexity").unwrap_or(loss.exp());
                        valid_lines.push((step, loss, ppl));
                    }
                }
                _ if is_test => {
                    let loss =
                        num(&v, "loss").or_else(|| nested("test").and_then(|t| num(t, "loss")));
                    if let Some(loss) = loss {
                        log.test_loss.push((step, loss));
                    }
                }
                Some("epoch") | None => {
                    if let Some(loss) = num(&v, "train_loss") {
                        log.epoch_train_loss.push((step, loss));
                    }
                    if let Some(lr) = num(&v, "lr") {
                        lr_epochs.push((step, lr));
                    }
                    if let Some(loss) = nested("valid").and_then(|t| num(t, "loss")) {
                        let ppl = nested("valid")
                            .and_then(|t| num(t, "perplexity"))
                            .unwrap_or(loss.exp());
                        valid_epochs.push((step, loss, ppl));
                    }
                }
                Some(_) => {}
            }
        }
        // An epoch summary repeats the last `valid` line: use the finer series when there is one.
        let valid = if valid_lines.is_empty() {
            valid_epochs
        } else {
            valid_lines
        };
        log.valid_loss = valid.iter().map(|&(s, l, _)| (s, l)).collect();
        log.valid_perplexity = valid.iter().map(|&(s, _, p)| (s, p)).collect();
        log.lr = if lr_steps.is_empty() {
            lr_epochs
        } else {
            lr_steps
        };
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_format_uses_step_lines_and_skips_the_unknown() {
        let text = r#"{"kind":"train","epoch":1,"step":20,"loss":6.1,"lr":0.001,"tokens_per_sec":900,"step_ms":40,"elapsed_s":1.0}
{"kind":"train","epoch":1,"step":40,"loss":5.5,"lr":0.0009}
{"kind":"valid","epoch":1,"step":40,"loss":5.0,"perplexity":148.4,"bits":7.2,"tokens":100}
{"kind":"epoch","epoch":1,"step":40,"train_loss":5.8,"lr":0.0009,"valid":{"loss":5.0,"perplexity":148.4}}
{"kind":"checkpoint","step":40,"path":"x"}
not json
{"kind":"train","epoch":2,"loss":1.0}

{"kind":"test","step":40,"loss":5.1,"perplexity":164.0}
"#;
        let log = MetricsLog::parse(text);
        assert_eq!(log.train_loss, [(20.0, 6.1), (40.0, 5.5)]);
        assert_eq!(log.lr, [(20.0, 0.001), (40.0, 0.0009)]);
        assert_eq!(log.valid_loss, [(40.0, 5.0)]);
        assert_eq!(log.valid_perplexity, [(40.0, 148.4)]);
        assert_eq!(log.epoch_train_loss, [(40.0, 5.8)]);
        assert_eq!(log.test_loss, [(40.0, 5.1)]);
        assert_eq!((log.lines, log.unreadable), (8, 1));
    }

    #[test]
    fn older_format_without_kind_is_read_from_epoch_summaries() {
        let text = r#"{"epoch":1,"eval_seconds":9.4,"lr":0.001,"step":117,"tokens_per_sec":472.8,"train_loss":5.62,"train_seconds":554.2,"valid":{"bits":6.74,"loss":4.67,"perplexity":107.3,"tokens":29248}}
{"split":"test","step":117,"test":{"loss":4.7,"perplexity":110.0}}
"#;
        let log = MetricsLog::parse(text);
        assert!(log.train_loss.is_empty());
        assert_eq!(log.epoch_train_loss, [(117.0, 5.62)]);
        assert_eq!(log.valid_loss, [(117.0, 4.67)]);
        assert_eq!(log.valid_perplexity, [(117.0, 107.3)]);
        assert_eq!(log.lr, [(117.0, 0.001)]);
        assert_eq!(log.test_loss, [(117.0, 4.7)]);
    }

    #[test]
    fn nothing_usable_is_empty() {
        let log = MetricsLog::parse("garbage\n{\"kind\":\"other\",\"step\":1}\n");
        assert!(log.is_empty());
        assert_eq!(log.unreadable, 1);
    }
}
