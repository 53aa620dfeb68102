//! One flat training configuration per paper run, read from YAML by `experiments`, and the profiles that
//! scale its budget without touching the method.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{config_err, Result};

/// A paper run: what to train and how. Unknown keys are rejected when parsing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name, used in output paths.
    pub name: String,
    /// What the run should reproduce, in words (e.g. the paper's number).
    #[serde(default)]
    pub reproduces: String,
    /// Data set: `mnist`, or `svhn` (the user's official files, `--svhn-dir`).
    pub dataset: String,
    /// The network.
    pub model: ModelConfig,
    /// Training method.
    pub method: Method,
    /// The optimiser, with the authors' update formulas.
    pub optimizer: OptimizerConfig,
    /// L2 weight decay added to every gradient (Chainer's WeightDecay hook); 0 in every MNIST run.
    #[serde(default)]
    pub weight_decay: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs over the training set.
    pub epochs: usize,
    /// Seed of initial weights, batch order and power-iteration vectors.
    #[serde(default)]
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at every epoch end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// After the last epoch, re-estimate every BN layer's running statistics as the mean over this many
    /// training images of batch statistics with dropout off (0: keep the running averages gathered
    /// under dropout, the authors' recipe).
    #[serde(default)]
    pub recalibrate_bn: usize,
    /// Budget overrides by profile name (`smoke`, `quick`, `paper`).
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

fn default_checkpoint_every() -> usize {
    500
}

/// The network of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// The Kolter-Wong MNIST CNN (1x28x28 inputs).
    KolterWong {
        /// Between layers: `relu` (the authors') or `minmax`.
        #[serde(default, skip_serializing_if = "Activation::is_relu")]
        activation: Activation,
    },
    /// The larger MNIST CNN of Wong et al., BCP, GloRo and BCOP ("4C3F"; 1x28x28 inputs).
    FourCThreeF {
        /// Between layers: `relu` or `minmax`.
        #[serde(default, skip_serializing_if = "Activation::is_relu")]
        activation: Activation,
    },
    /// WideResNet-depth-width (3x32x32 inputs).
    WideResnet {
        /// 6n + 4 (16 in the paper).
        depth: usize,
        /// Width factor k (4 in the paper).
        width: usize,
        /// Dropout inside blocks (0.4 in the paper).
        dropout: f32,
        /// The average-pooling shortcut variant (the authors' `svhn_avg` runs).
        #[serde(default)]
        avg_pool_shortcut: bool,
        /// After every BN: `relu` (the authors') or `minmax`.
        #[serde(default, skip_serializing_if = "Activation::is_relu")]
        activation: Activation,
    },
}

/// The activation between the layers of a built-in network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// MinMax (GroupSort with groups of two): 1-Lipschitz and gradient-norm preserving.
    Minmax,
}

impl Activation {
    fn is_relu(&self) -> bool {
        *self == Activation::Relu
    }
}

/// The training method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    /// Softmax cross-entropy (plus weight decay if configured).
    Plain,
    /// Parseval networks (Cisse et al. 2017) as the authors run them (reference 7.1): the model gets the
    /// Parseval structure, each update is followed by the simplex projection and the retraction with
    /// `beta`, and weight decay applies to the last layer only.
    Parseval {
        /// Retraction step (1e-4 in the paper's run).
        beta: f64,
    },
    /// Spectral-norm regularisation (Yoshida and Miyato 2017) as a gradient hook on every parameter
    /// with at least two dimensions, one power-iteration step per update (reference 7.2).
    SpectralNorm {
        /// The rate (0.01 in the paper's run).
        rate: f64,
        /// `authors` (default): the authors' hook, whose added gradient is rate sigma^2 a b^T (the
        /// gradient of rate sigma^3 / 3); `usual`: rate sigma a b^T, the gradient of (rate / 2) sigma^2.
        #[serde(default)]
        scaling: SpectralScaling,
    },
    /// Adversarial training (the paper's AT baseline, reference 8.3): every batch is replaced by the
    /// adversarials an untargeted C&W L2 attack finds against the current model (inputs it cannot break
    /// stay clean), then trained on with plain cross-entropy. The attack comes from the caller
    /// (`RunOptions::adversary`); these are its hyper-parameters.
    Adversarial {
        /// Adam steps per binary-search step (30 in the paper's run).
        iterations: usize,
        /// Binary-search steps over the constant (1 in the paper's run).
        binary_steps: usize,
        /// The C&W constant (1 in the paper's run).
        initial_const: f64,
    },
    /// A GloRo-style loss (Leino et al. 2021) beside LMT: one extra logit, the largest of
    /// `z_j + eps L_sub ||w_t - w_j||` over j != t (from the same train-time estimate as LMT's Prop. 2),
    /// and cross-entropy over the K + 1 logits. LMT raises every non-target logit by its own margin; this
    /// adds a single "bottom" class that wins whenever any class comes within eps of the target.
    Gloro {
        /// The radius eps the loss asks for.
        eps: f64,
        /// eps at step 0; eps grows linearly to `eps` over `warmup_epochs`.
        #[serde(default)]
        eps_start: Option<f64>,
        /// Epochs of linear warm-up (0: eps from the start).
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// Lipschitz-margin training.
    Lmt {
        /// 1 (whole-network bound) or 2 (per class pair through the last layer; the paper's runs).
        proposition: u8,
        /// The authors' per-sample capping of the added margin (true in their code).
        capped: bool,
        /// Target robustness c.
        c: f64,
        /// c at step 0; c grows linearly to `c` over `warmup_epochs` (the authors: 1e-5 over 5 on SVHN).
        #[serde(default)]
        c_start: Option<f64>,
        /// Epochs of linear warm-up (0: c from the start, as on MNIST).
        #[serde(default)]
        warmup_epochs: f64,
    },
}

/// Which gradient the spectral-norm hook adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpectralScaling {
    /// rate sigma^2 a b^T (the authors' code).
    #[default]
    Authors,
    /// rate sigma a b^T (the gradient of (rate / 2) sigma^2, as the method is usually stated).
    Usual,
}

/// Optimiser and learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8), Chainer's formula.
    Adam {
        /// alpha.
        lr: f64,
    },
    /// Nesterov accelerated gradient, Chainer's formula, with step drops of the learning rate.
    Nesterov {
        /// Initial learning rate.
        lr: f64,
        /// Momentum mu.
        momentum: f64,
        /// Epochs (fractional after a profile scales the budget) after which the rate is multiplied by
        /// `drop_ratio`.
        #[serde(default)]
        drop_epochs: Vec<f64>,
        /// Factor applied at each drop.
        #[serde(default = "default_drop")]
        drop_ratio: f64,
    },
}

fn default_drop() -> f64 {
    0.1
}

/// Budget overrides of one profile; a missing value keeps the config's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Epochs.
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Train on the first this many training images.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Evaluate on the first this many test images.
    #[serde(default)]
    pub test_subset: Option<usize>,
    /// WideResNet width factor for this profile (smaller k for reduced CPU budgets).
    #[serde(default)]
    pub width: Option<usize>,
    /// The initial learning rate for this budget (a departure from the config's, named in outputs).
    #[serde(default)]
    pub lr: Option<f64>,
    /// BN recalibration for this budget (see [`TrainConfig::recalibrate_bn`]; a departure when the
    /// config has none).
    #[serde(default)]
    pub recalibrate_bn: Option<usize>,
    /// Hold out the last this many training images as a validation set: training uses the rest and the
    /// per-epoch accuracy is measured on them, never on the test set (for choosing hyper-parameters).
    /// Not written when absent, so the resolved runs of configs without it read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
    /// Warm c (LMT) or eps (GloRo) up over this fraction of the profile's training instead of the
    /// config's (a departure, named in outputs): the paper's 5 of 160 epochs are 23,600 SVHN steps, a
    /// short budget's 3% can be a few dozen. Not written when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_fraction: Option<f64>,
}

/// A validated config with a profile applied: what the loop runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The config as given.
    pub config: TrainConfig,
    /// The profile's name.
    pub profile: String,
    /// Epochs after the profile.
    pub epochs: usize,
    /// Training images used (None: all).
    pub train_subset: Option<usize>,
    /// Test images used for per-epoch accuracy (None: all).
    pub test_subset: Option<usize>,
    /// The model after the profile (a WRN width override applied).
    pub model: ModelConfig,
    /// The optimiser after the profile: its learning rate, and learning-rate drops at the same
    /// fractions of training as the config's.
    pub optimizer: OptimizerConfig,
    /// The method after the profile: c's warm-up over the same fraction of training as the config's.
    pub method: Method,
    /// Training images for the BN recalibration after the last epoch (0: none).
    pub recalibrate_bn: usize,
    /// Training images held out as the validation set (0: none; see [`Profile::validation`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub validation: usize,
    /// True when the profile reduces the config's budget: every output must say so.
    pub reduced: bool,
    /// What this budget does differently from the authors' recipe, in words (empty: nothing); every
    /// output names these.
    pub departures: Vec<String>,
}

impl TrainConfig {
    /// Checks every value and applies `profile`; errors name the key.
    pub fn plan(&self, profile: &str) -> Result<Plan> {
        match (self.dataset.as_str(), &self.model) {
            ("mnist", ModelConfig::KolterWong { .. } | ModelConfig::FourCThreeF { .. })
            | ("svhn", ModelConfig::WideResnet { .. }) => {}
            ("mnist" | "svhn", m) => {
                return Err(config_err(
                    "model",
                    format!(
                        "{m:?} does not take {} images (kolter_wong and four_c_three_f: mnist, wide_resnet: svhn)",
                        self.dataset
                    ),
                ));
            }
            (other, _) => {
                return Err(config_err(
                    "dataset",
                    format!("`{other}` is not supported; use `mnist` or `svhn`"),
                ))
            }
        }
        if let ModelConfig::WideResnet {
            depth,
            width,
            dropout,
            ..
        } = &self.model
        {
            if *depth < 10 || (depth - 4) % 6 != 0 {
                return Err(config_err(
                    "model.depth",
                    format!("must be 6n + 4 with n >= 1, got {depth}"),
                ));
            }
            if *width == 0 {
                return Err(config_err("model.width", "must be positive"));
            }
            if !(0.0..1.0).contains(dropout) {
                return Err(config_err(
                    "model.dropout",
                    format!("must lie in [0, 1), got {dropout}"),
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(config_err("batch_size", "must be positive"));
        }
        if self.epochs == 0 {
            return Err(config_err("epochs", "must be positive"));
        }
        if self.checkpoint_every == 0 {
            return Err(config_err("checkpoint_every", "must be positive"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(config_err(
                "weight_decay",
                format!("must be finite and >= 0, got {}", self.weight_decay),
            ));
        }
        match &self.optimizer {
            OptimizerConfig::Adam { lr } => positive("optimizer.lr", *lr)?,
            OptimizerConfig::Nesterov {
                lr,
                momentum,
                drop_ratio,
                ..
            } => {
                positive("optimizer.lr", *lr)?;
                if !(0.0..1.0).contains(momentum) {
                    return Err(config_err(
                        "optimizer.momentum",
                        format!("must lie in [0, 1), got {momentum}"),
                    ));
                }
                positive("optimizer.drop_ratio", *drop_ratio)?;
            }
        }
        if let Method::SpectralNorm { rate, .. } = &self.method {
            positive("method.rate", *rate)?;
        }
        if let Method::Adversarial {
            iterations,
            binary_steps,
            initial_const,
        } = &self.method
        {
            if *iterations == 0 || *binary_steps == 0 {
                return Err(config_err(
                    "method.iterations",
                    "adversarial training needs iterations >= 1 and binary_steps >= 1",
                ));
            }
            positive("method.initial_const", *initial_const)?;
        }
        if let Method::Gloro {
            eps,
            eps_start,
            warmup_epochs,
        } = &self.method
        {
            positive("method.eps", *eps)?;
            if let Some(e0) = eps_start {
                positive("method.eps_start", *e0)?;
            }
            if !(*warmup_epochs >= 0.0 && warmup_epochs.is_finite()) {
                return Err(config_err(
                    "method.warmup_epochs",
                    "must be finite and >= 0",
                ));
            }
        }
        if let Method::Parseval { beta } = &self.method {
            positive("method.beta", *beta)?;
            if !matches!(self.model, ModelConfig::WideResnet { .. }) {
                return Err(config_err(
                    "method",
                    "parseval needs model kind wide_resnet",
                ));
            }
        }
        if let Method::Lmt {
            proposition,
            c,
            c_start,
            warmup_epochs,
            ..
        } = &self.method
        {
            if !matches!(proposition, 1 | 2) {
                return Err(config_err(
                    "method.proposition",
                    format!("must be 1 or 2, got {proposition}"),
                ));
            }
            positive("method.c", *c)?;
            if let Some(c0) = c_start {
                positive("method.c_start", *c0)?;
            }
            if !(*warmup_epochs >= 0.0 && warmup_epochs.is_finite()) {
                return Err(config_err(
                    "method.warmup_epochs",
                    "must be finite and >= 0",
                ));
            }
        }
        let p = match self.profiles.get(profile) {
            Some(p) => p.clone(),
            None if profile == "paper" => Profile::default(),
            None => {
                let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
                return Err(config_err("profiles", format!("no profile `{profile}` in `{}`; it has {known:?} (and `paper`, the config as written)", self.name)));
            }
        };
        if p.epochs == Some(0)
            || p.train_subset == Some(0)
            || p.test_subset == Some(0)
            || p.width == Some(0)
            || p.validation == Some(0)
            || p.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite()))
        {
            return Err(config_err(
                &format!("profiles.{profile}"),
                "epochs, subsets, width, validation and lr must be positive",
            ));
        }
        if p.warmup_fraction.is_some_and(|f| !(f > 0.0 && f <= 1.0)) {
            return Err(config_err(
                &format!("profiles.{profile}.warmup_fraction"),
                format!(
                    "must lie in (0, 1] (a fraction of training), got {}",
                    p.warmup_fraction.unwrap_or_default()
                ),
            ));
        }
        let epochs = p.epochs.unwrap_or(self.epochs);
        let mut model = self.model.clone();
        let mut narrower = false;
        if let (Some(w), ModelConfig::WideResnet { width, .. }) = (p.width, &mut model) {
            narrower = w < *width;
            *width = w;
        }
        let validation = p.validation.unwrap_or(0);
        let reduced = epochs < self.epochs
            || p.train_subset.is_some()
            || p.test_subset.is_some()
            || validation > 0
            || narrower;
        // Schedules keep the paper's shape: drops and warm-up at the same fractions of training.
        let scale = epochs as f64 / self.epochs as f64;
        let mut departures = Vec::new();
        let mut optimizer = self.optimizer.clone();
        if let OptimizerConfig::Nesterov {
            lr, drop_epochs, ..
        } = &mut optimizer
        {
            drop_epochs.iter_mut().for_each(|e| *e *= scale);
            if let Some(new) = p.lr.filter(|new| new != lr) {
                departures.push(format!(
                    "initial learning rate {new} instead of the authors' {lr}, for the {epochs}-epoch budget"
                ));
                *lr = new;
            }
        } else if p.lr.is_some() {
            return Err(config_err(
                &format!("profiles.{profile}.lr"),
                "only the Nesterov optimiser takes a profile learning rate",
            ));
        }
        let mut method = self.method.clone();
        let what = if matches!(method, Method::Lmt { .. }) {
            "c"
        } else {
            "eps"
        };
        if let Method::Lmt { warmup_epochs, .. } | Method::Gloro { warmup_epochs, .. } = &mut method
        {
            let scaled = *warmup_epochs * scale;
            let chosen = p.warmup_fraction.map_or(scaled, |f| f * epochs as f64);
            if chosen != scaled {
                departures.push(format!(
                    "{what} warmed up over the first {} of training instead of the config's {:.4} ({} of {} epochs), for the {epochs}-epoch budget",
                    p.warmup_fraction.unwrap_or_default(),
                    *warmup_epochs / self.epochs as f64,
                    warmup_epochs,
                    self.epochs
                ));
            }
            *warmup_epochs = chosen;
        } else if p.warmup_fraction.is_some() {
            return Err(config_err(
                &format!("profiles.{profile}.warmup_fraction"),
                "only LMT and GloRo runs warm a constant up; remove it",
            ));
        }
        let recalibrate_bn = p.recalibrate_bn.unwrap_or(self.recalibrate_bn);
        if recalibrate_bn > 0 && self.recalibrate_bn == 0 {
            departures.push(format!(
                "BN running statistics re-estimated after training on {recalibrate_bn} training images with dropout off (the authors keep those gathered under dropout)"
            ));
        }
        Ok(Plan {
            config: self.clone(),
            profile: profile.to_string(),
            epochs,
            train_subset: p.train_subset,
            test_subset: p.test_subset,
            model,
            optimizer,
            method,
            recalibrate_bn,
            validation,
            reduced,
            departures,
        })
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn positive(key: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(config_err(
            key,
            format!("must be positive and finite, got {v}"),
        ))
    }
}

/// c (LMT) or eps (GloRo) at fractional epoch `epoch_detail`: linear from the start value to the final
/// one over `warmup_epochs` (the authors' GoyalSchedule), then constant. A pure function of the step, so
/// resuming needs no state.
pub fn c_schedule(method: &Method, epoch_detail: f64) -> f64 {
    let (c, c_start, warmup) = match method {
        Method::Plain
        | Method::SpectralNorm { .. }
        | Method::Parseval { .. }
        | Method::Adversarial { .. } => return 0.0,
        Method::Lmt {
            c,
            c_start,
            warmup_epochs,
            ..
        } => (*c, *c_start, *warmup_epochs),
        Method::Gloro {
            eps,
            eps_start,
            warmup_epochs,
        } => (*eps, *eps_start, *warmup_epochs),
    };
    let c0 = c_start.unwrap_or(c);
    if warmup <= 0.0 || epoch_detail >= warmup {
        c
    } else {
        let f = epoch_detail / warmup;
        c * f + c0 * (1.0 - f)
    }
}

/// The learning rate at fractional epoch `epoch_detail` (completed epochs plus the fraction of the
/// current one): each drop applies from the first step at or after its epoch.
pub fn lr_schedule(opt: &OptimizerConfig, epoch_detail: f64) -> f64 {
    match opt {
        OptimizerConfig::Adam { lr } => *lr,
        OptimizerConfig::Nesterov {
            lr,
            drop_epochs,
            drop_ratio,
            ..
        } => {
            lr * drop_ratio.powi(drop_epochs.iter().filter(|&&e| epoch_detail >= e).count() as i32)
        }
    }
}
