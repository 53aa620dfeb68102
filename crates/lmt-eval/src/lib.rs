//! The evaluation library of lmt-rs: what to do with a classifier once it exists, for any network the
//! [`lmt_models::Classifier`] trait covers (the built-in ones, and ONNX imports from `lmt-onnx`).
//!
//! - [`certify`]: one certified Lipschitz bound per model, then a guarded radius per input by Prop. 1 or
//!   Prop. 2 ([`CertifyConfig`], [`Certification`], [`CertifySummary`]);
//! - [`attack`]: C&W, DeepFool or PGD over the same inputs ([`AttackSpec`], [`AttackSummary`]), and
//!   [`check_against`], which flags every successful attack inside a certified radius;
//! - [`tightness`]: inequality (5) (A certified, B and C empirical lower-bound radii, D attacks) and the
//!   Figure-5 move by exactly the certified radius;
//! - [`metrics`]: every metric once (certified accuracy, accuracy under attack, Wilson intervals,
//!   medians, ratios); the boundary rule is [`metrics::certified_at`]: certified at `e` iff `e < r`;
//! - [`rows`]: per-input results as typed rows, CSV in and out.
//!
//! Load a model, certify a test set, attack it, check consistency (here a small CNN exported by PyTorch
//! and the real MNIST test set that `make data` fetches):
//!
//! ```
//! use std::path::Path;
//! use lmt_eval::{attack, certify, check_against, AttackSpec, CertifyConfig, CertifySummary};
//!
//! let model = lmt_onnx::load(Path::new("../lmt-onnx/tests/fixtures/cnn_bn_maxpool.onnx"))?.graph;
//! let mnist = lmt_data::load_mnist(Path::new("../../data/mnist"))?;
//! let points: Vec<usize> = (0..20).collect();
//! let certs = certify(&model, &mnist.test, &points, &CertifyConfig::default(), &mut |_| {})?;
//! println!("{:?} because {}; L = {}", certs.proposition, certs.why, certs.l);
//! print!("{}", CertifySummary::of(&certs.rows));
//! let mut found = attack(&model, &mnist.test, &points, &AttackSpec::DeepFool(Default::default()), 10, &mut |_| {})?;
//! let violations = check_against(&mut found, &certs.rows)?;
//! assert!(violations.is_empty(), "an attack inside a certified radius: {violations:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Invariant:** knows no command line, no results layout and no plotting; it returns rows and numbers
//! and the caller decides where they go. Depends on data, core, models, attacks and train (for batches).
#![deny(missing_docs)]

pub use attack::{attack, check_against, AttackSpec, AttackSummary, Violation};
pub use certify::{
    batch, certified_bounds, certify, choose_proposition, Certification, CertifyConfig,
    CertifySummary, SUMMARY_SIZES,
};
pub use error::{EvalError, Result};
pub use rows::{read_csv, read_csv_file, to_csv, write_csv, AttackRow, CertificateRow};

mod attack;
mod certify;
mod error;
pub mod metrics;
pub mod rows;
pub mod tightness;
