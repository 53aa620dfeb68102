//! Training for lmt-rs: one loop for every method of the LMT paper, the authors' optimisers, configs with
//! profiles, atomic checkpoints and bit-identical resume.
//!
//! [`TrainConfig`] is one paper run (read from YAML by `experiments`); [`TrainConfig::plan`] validates it
//! and applies a profile; [`train`] runs the plan on a [`lmt_models::Classifier`].
//!
//! **Invariant:** the loop never depends on attacks; adversarial training will receive its attack as a
//! function.
#![deny(missing_docs)]

pub use checkpoint::Position;
pub use config::{
    c_schedule, lr_schedule, Activation, Method, ModelConfig, OptimizerConfig, Plan, Profile,
    TrainConfig,
};
pub use error::{Result, TrainError};
pub use optim::Optimizer;
pub use train::{
    accuracy, batch_tensors, train, Adversary, EpochLog, RunOptions, Summary, LOG_HEADER,
};

pub mod checkpoint;
mod config;
mod error;
mod optim;
mod parseval;
mod spectral;
mod train;

/// Start-up settings that make candle's CPU path faster without changing any number
/// (shared/reference/candle-cpu-performance.md, levers 1 and 2): glibc keeps large buffers in its heap
/// instead of an mmap/munmap pair per tensor op, and the thread count is fixed once instead of being
/// re-read from /proc/cpuinfo on every matmul. Call it first thing in `main`, before any thread starts.
pub fn tune_cpu_runtime() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; the caller runs it before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
