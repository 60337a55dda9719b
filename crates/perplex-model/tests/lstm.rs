//! The LSTM language model against `torch.nn.LSTM` (golden logits and final state).
mod common;

use common::{max_abs_diff, Fixture};
use tch::Device;

#[test]
fn logits_and_state_match_pytorch_to_1e_5() {
    for name in ["lstm_untied", "lstm_tied"] {
        let f = Fixture::load(name, "lstm");
        let batch = f.input.size()[0];
        let out = tch::no_grad(|| {
            f.model
                .forward(&f.input, &f.model.initial_state(batch, Device::Cpu), false)
                .unwrap()
        });
        for (key, got) in [
            ("logits", out.logits()),
            ("h", out.state.0[0].shallow_clone()),
            ("c", out.state.0[1].shallow_clone()),
        ] {
            let diff = max_abs_diff(&got, &f.expected(key));
            println!("{name} {key}: max |perplex - PyTorch| = {diff:e}");
            assert!(diff < 1e-5, "{name} {key}: {diff}");
        }
    }
}

#[test]
fn a_tied_lstm_has_no_out_weight_and_its_head_is_the_embedding() {
    let f = Fixture::load("lstm_tied", "lstm");
    let names = f.vs.variables();
    assert!(!names.contains_key("out.weight") && names.contains_key("out.bias"));
    let out = f
        .model
        .forward(&f.input, &f.model.initial_state(2, Device::Cpu), false)
        .unwrap();
    assert_eq!(
        out.head.weight.data_ptr(),
        names["embedding.weight"].data_ptr()
    );
}
