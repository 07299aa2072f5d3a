//! Opening a CUDA device never panics: without a driver (CI, laptops) it is a clear error
//! that names the driver and suggests `--device cpu`; with a GPU it succeeds. Valid on both
//! kinds of machine.

use hyperseg_engine::backend::cuda::info;
use hyperseg_engine::{Device, Error};

/// Whether this machine has a CUDA driver that reports at least one GPU.
fn machine_has_gpu() -> bool {
    matches!(info::probe().gpus, Ok(g) if !g.is_empty())
}

#[test]
fn cuda_device_zero_is_ok_with_a_gpu_and_a_clear_error_without() {
    let opened = std::panic::catch_unwind(|| Device::cuda(0)).expect("Device::cuda must not panic");
    match (machine_has_gpu(), opened) {
        (true, Ok(d)) => assert!(d.is_cuda()),
        (true, Err(e)) => panic!("this machine has a GPU, but opening it failed: {e}"),
        (false, Ok(_)) => panic!("opened a CUDA device on a machine without a GPU"),
        (false, Err(e)) => {
            assert!(matches!(e, Error::CudaUnavailable(_)), "unexpected error kind: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains("--device cpu"), "{msg}");
            if info::probe().driver_version.is_err() {
                assert!(msg.contains("driver"), "{msg}");
            }
        }
    }
}

#[test]
fn best_available_falls_back_to_the_cpu_with_a_reason() {
    let (dev, why) = Device::best_available();
    if machine_has_gpu() {
        assert!(dev.is_cuda(), "{why}");
    } else {
        assert!(dev.is_cpu());
        assert!(why.contains("--device cpu"), "{why}");
    }
}

#[test]
fn a_missing_ordinal_is_an_error_not_a_panic() {
    let r = std::panic::catch_unwind(|| Device::cuda(4096)).expect("Device::cuda must not panic");
    let msg = r.expect_err("no machine has 4097 GPUs").to_string();
    assert!(msg.contains("--device cpu"), "{msg}");
}

#[test]
fn info_describes_every_part_without_panicking() {
    let lines = std::panic::catch_unwind(info::describe).expect("info::describe must not panic");
    let text = lines.join("\n");
    for part in ["CUDA driver", "cuBLAS", "cuDNN", "NVTX"] {
        assert!(text.contains(part), "{text}");
    }
}
