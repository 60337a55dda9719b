//! The untied GRU's initial draws, in a process of their own: they come from libtorch's global
//! generator, which the library's other unit tests (run on parallel threads in one process)
//! also draw from.
use perplex_model::{BuildContext, GruLmConfig, ModelConfig};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn an_untied_gru_starts_from_the_same_numbers_as_before_tie_weights_existed() {
    // Sums of each variable and of the logits for seed 42, recorded before `tie_weights`
    // was added (draw order: embedding, GRU layers, out.weight, out.bias).
    let expected = [
        ("embedding.weight", 5.276002161204815),
        ("gru.bias_hh_l0", -1.135610692203045),
        ("gru.bias_hh_l1", -1.0825517065823078),
        ("gru.bias_ih_l0", 0.04073846619576216),
        ("gru.bias_ih_l1", -0.13248451612889767),
        ("gru.weight_hh_l0", -4.338272114749998),
        ("gru.weight_hh_l1", 2.212119656149298),
        ("gru.weight_ih_l0", -4.230744687607512),
        ("gru.weight_ih_l1", -2.5908216387033463),
        ("out.bias", 0.11935732886195183),
        ("out.weight", -3.620683495886624),
    ];
    tch::manual_seed(42);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = GruLmConfig {
        embedding_dim: 6,
        hidden_size: 6,
        num_layers: 2,
        tie_weights: false,
        ..Default::default()
    }
    .build(&vs.root(), &BuildContext::new(11))
    .unwrap();
    let sum = |t: &Tensor| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    let variables = vs.variables();
    assert_eq!(variables.len(), expected.len());
    for (name, value) in expected {
        let got = sum(&variables[name]);
        assert!((got - value).abs() < 1e-12, "{name}: {got} != {value}");
    }
    let x = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
    let out = m
        .forward(&x, &m.initial_state(2, Device::Cpu), false)
        .unwrap();
    // The logits go through BLAS, whose float32 rounding differs between CPUs (MKL picks
    // its kernels per CPU): equal to float32 precision, not to the bit.
    let logits = sum(&out.logits());
    assert!(
        (logits - 6.660416595637798).abs() < 1e-5,
        "logits sum {logits}"
    );
}
