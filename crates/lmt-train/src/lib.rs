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
    c_schedule, lr_schedule, Method, ModelConfig, OptimizerConfig, Plan, Profile, TrainConfig,
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
