//! The collectives between two real processes on Gloo: this test binary starts itself twice as
//! ranks 0 and 1 (`PERPLEX_DIST_TEST_RANK`), each checking what it receives. Fails (never skips)
//! in a build without c10d, saying what to install.
use std::process::Command;
use std::time::{Duration, Instant};

use perplex_dist::{c10d_available, DataParallel, Launch, ProcessGroup};
use perplex_trainer::strategy::Strategy;
use tch::{Kind, Tensor};

const RANK_VAR: &str = "PERPLEX_DIST_TEST_RANK";

#[test]
fn this_build_has_c10d() {
    assert!(c10d_available(), "{}", perplex_dist::DistError::NotBuilt);
}

#[test]
fn all_reduce_broadcast_all_gather_and_barrier_across_two_processes() {
    if let Ok(rank) = std::env::var(RANK_VAR) {
        worker(rank.parse().unwrap());
        return;
    }
    assert!(c10d_available(), "{}", perplex_dist::DistError::NotBuilt);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "all_reduce_broadcast_all_gather_and_barrier_across_two_processes",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(RANK_VAR, rank.to_string())
                .env("PERPLEX_DIST_TIMEOUT_S", "20")
                .env("MASTER_PORT", port.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    for mut child in children {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("a rank hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "a rank failed (its output is above)");
    }
}

fn worker(rank: usize) {
    let port: u16 = std::env::var("MASTER_PORT").unwrap().parse().unwrap();
    let launch = Launch {
        rank,
        local_rank: rank,
        world_size: 2,
        local_world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart_count: 0,
        timeout: Duration::from_secs(20),
    };
    let group = ProcessGroup::connect(launch).unwrap();
    let r = rank as f64;

    // Sum: [1, 2, 3] + r on ranks 0 and 1 gives [3, 5, 7].
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) + r;
    group.all_reduce_sum(&t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [3.0, 5.0, 7.0]);

    // A non-contiguous float64 tensor goes through a contiguous copy and back.
    let m = (Tensor::arange(6, (Kind::Double, tch::Device::Cpu)).reshape([2, 3]) + r).tr();
    group.all_reduce_sum(&m).unwrap();
    let expected =
        (Tensor::arange(6, (Kind::Double, tch::Device::Cpu)).reshape([2, 3]) * 2.0 + 1.0).tr();
    assert_eq!(f64::try_from((&m - &expected).abs().max()).unwrap(), 0.0);

    // Broadcast from rank 1.
    let mut b = Tensor::full([4], 10.0 + r, (Kind::Int64, tch::Device::Cpu));
    group.broadcast(&mut b, 1).unwrap();
    assert_eq!(Vec::<i64>::try_from(&b).unwrap(), [11; 4]);

    // Gather: row k is rank k's.
    let g = group
        .all_gather(&Tensor::from_slice(&[r as f32, 100.0 + r as f32]))
        .unwrap();
    assert_eq!(g.size(), [2, 2]);
    assert_eq!(
        Vec::<f32>::try_from(g.flatten(0, -1)).unwrap(),
        [0.0, 100.0, 1.0, 101.0]
    );

    group.barrier().unwrap();

    // 10 M floats: the size of a large gradient bucket; timed for the log.
    let big = Tensor::ones([10_000_000], (Kind::Float, tch::Device::Cpu));
    let t0 = Instant::now();
    group.all_reduce_sum(&big).unwrap();
    eprintln!(
        "rank {rank}: all-reduce of 10M floats took {:.1} ms",
        1e3 * t0.elapsed().as_secs_f64()
    );
    assert_eq!(f64::try_from(big.sum(Kind::Double)).unwrap(), 2e7);

    data_parallel(DataParallel::new(group).with_bucket_bytes(16), r);
}

/// The strategy over the group: rank 0's variables everywhere (ranks initialised differently),
/// gradients summed across several small buckets, a missing gradient counted as zero; a
/// parameter only rank 1 uses gets the sum on rank 0 too (issue 24, fault 2: rank 0 kept no
/// gradient, so its optimiser skipped what rank 1 updated), one no rank uses keeps none.
fn data_parallel(dp: DataParallel, r: f64) {
    let cpu = (Kind::Float, tch::Device::Cpu);
    let vars: Vec<(String, Tensor)> = (0..4)
        .map(|i| {
            let v = Tensor::full([3], 10.0 * i as f64 + r, cpu).set_requires_grad(true);
            (format!("v{i}"), v)
        })
        .collect();
    dp.prepare(&vars).unwrap();
    for (i, (_, v)) in vars.iter().enumerate() {
        assert_eq!(Vec::<f32>::try_from(v).unwrap(), [10.0 * i as f32; 3]);
    }
    // Gradients: (r + 1) · (i + 1) for v0 and v1; v2 unused (no gradient anywhere); v3 used by
    // rank 1 only (gradient 5 there, none on rank 0).
    let mut loss = (&vars[0].1 * (r + 1.0)).sum(Kind::Float)
        + (&vars[1].1 * (2.0 * (r + 1.0))).sum(Kind::Float);
    if r == 1.0 {
        loss += (&vars[3].1 * 5.0).sum(Kind::Float);
    }
    loss.backward();
    assert_eq!(vars[3].1.grad().defined(), r == 1.0);
    dp.reduce_gradients(&vars).unwrap();
    assert_eq!(Vec::<f32>::try_from(vars[0].1.grad()).unwrap(), [3.0; 3]);
    assert_eq!(Vec::<f32>::try_from(vars[1].1.grad()).unwrap(), [6.0; 3]);
    assert!(!vars[2].1.grad().defined());
    assert!(vars[3].1.grad().defined(), "rank {r}: v3 has no gradient");
    assert_eq!(Vec::<f32>::try_from(vars[3].1.grad()).unwrap(), [5.0; 3]);
    // What the reduction reports is the gradient it summed: 4 tensors of 3 f32 (48 bytes), each
    // its own bucket under a 16-byte cap (v2 as zeros), in one reduction.
    let stats = dp.reduction_stats();
    assert_eq!((stats.reductions, stats.bytes, stats.buckets), (1, 48, 4));
    assert!(stats.seconds > 0.0 && stats.mean_seconds() == stats.seconds);
    let sum = dp.all_reduce_sum(&Tensor::from(r + 1.0)).unwrap();
    assert_eq!(f64::try_from(sum).unwrap(), 3.0);
}
