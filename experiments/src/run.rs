//! Shared glue for `train` and `certify`: configs from YAML, models from configs and checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Var};
use candle_nn::VarMap;
use lmt_data::{Dataset, SvhnLabels, SvhnOptions};
use lmt_models::{Classifier, FourCThreeF, KolterWong, WideResNet, WideResNetCfg};
use lmt_train::{ModelConfig, TrainConfig};

use crate::device::device;
use crate::DataArgs;

/// Reads a config given as a path or as the name of a file in `experiments/configs/`.
pub fn load_config(name_or_path: &str) -> Result<(TrainConfig, PathBuf)> {
    let direct = PathBuf::from(name_or_path);
    let path = if direct.is_file() {
        direct
    } else {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(format!("{name_or_path}.yaml"));
        if !p.is_file() {
            let known: Vec<String> = std::fs::read_dir(p.parent().expect("configs dir"))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            bail!("no config `{name_or_path}`: not a file, and not in experiments/configs/ (available: {known:?})");
        }
        p
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: TrainConfig = serde_norway::from_str(&text).with_context(|| {
        format!(
            "{}: invalid config (unknown keys are rejected)",
            path.display()
        )
    })?;
    Ok((cfg, path))
}

/// A model built from a config, with its trainable variables by name.
pub struct Built {
    /// The network.
    pub model: Box<dyn Classifier>,
    /// Its variables.
    pub varmap: VarMap,
}

impl Built {
    /// The trainable variables, sorted by name.
    pub fn params(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Loads the parameters of a checkpoint written by `train`; a tensor missing, of another shape, or
    /// unknown to this model (a checkpoint of another network) is an error.
    pub fn load(&self, checkpoint: &Path) -> Result<()> {
        let map = candle_core::safetensors::load(checkpoint, &Device::Cpu)
            .with_context(|| format!("reading checkpoint {} (expected the checkpoint.safetensors written by `experiments train`)", checkpoint.display()))?;
        let wanted: Vec<(String, Var)> = self
            .params()
            .into_iter()
            .chain(self.model.buffers())
            .collect();
        let state = ["optim.", "power.", "meta.", "snreg."];
        let mut unknown: Vec<&String> = map
            .keys()
            .filter(|k| {
                !state.iter().any(|p| k.starts_with(p)) && !wanted.iter().any(|(n, _)| n == *k)
            })
            .collect();
        unknown.sort();
        if !unknown.is_empty() {
            bail!(
                "{}: tensors {:?} are not part of this network; was it written for another model?",
                checkpoint.display(),
                &unknown[..unknown.len().min(5)]
            );
        }
        for (name, var) in wanted {
            let t = map.get(&name).with_context(|| {
                format!(
                    "{}: no tensor `{name}`; was it written for another model?",
                    checkpoint.display()
                )
            })?;
            var.set(&t.to_device(var.device())?).with_context(|| {
                format!(
                    "{}: tensor `{name}` has shape {:?}, the model needs {:?}",
                    checkpoint.display(),
                    t.dims(),
                    var.dims()
                )
            })?;
        }
        Ok(())
    }
}

/// A trained model read back from a checkpoint and the `config.yaml` that `train` wrote beside it.
pub struct Trained {
    /// The config the model was trained with.
    pub config: TrainConfig,
    /// The profile it ran under.
    pub profile: String,
    /// Whether the run's budget was reduced from the paper's.
    pub reduced: bool,
    /// Training images it held out as a validation set (0: none).
    pub validation: usize,
    /// The resolved config file, verbatim (for manifests).
    pub config_text: String,
    /// The model with the checkpoint's weights.
    pub built: Built,
    /// The checkpoint's directory.
    pub dir: PathBuf,
}

/// The resolved run as `train` records it (config.yaml beside the checkpoint, and the checkpoint's own
/// metadata).
#[derive(serde::Deserialize, PartialEq)]
pub struct Resolved {
    /// The config the model was trained with.
    pub config: TrainConfig,
    /// The profile it ran under.
    pub profile: String,
    /// The network after its profile.
    pub model: ModelConfig,
    /// Whether the run's budget was reduced from the paper's.
    pub reduced: bool,
    /// Epochs of the run's budget (after its profile).
    #[serde(default)]
    pub epochs: usize,
    /// What its budget did differently from the authors' recipe.
    #[serde(default)]
    pub departures: Vec<String>,
    /// Training images it held out as a validation set (0: none).
    #[serde(default)]
    pub validation: usize,
}

/// The run recorded in `dir/config.yaml`, without its checkpoint (committed results on a fresh clone).
pub fn read_resolved(dir: &Path) -> Result<Resolved> {
    let path = dir.join("config.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (written by `experiments train`; the run directory holds no finished run)",
            path.display()
        )
    })?;
    serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Rebuilds the model of `checkpoint` and loads its weights. The network comes from the checkpoint's
/// own metadata (so the file alone suffices) and from the `config.yaml` beside it; when both exist they
/// must agree, so a config that describes another network (a flipped `avg_pool_shortcut`, a Parseval run
/// read as plain) is an error, not a silently different model.
pub fn load_trained(checkpoint: &Path) -> Result<Trained> {
    let dir = checkpoint.parent().map(PathBuf::from).unwrap_or_default();
    let cfg_path = dir.join("config.yaml");
    if !checkpoint.is_file() {
        bail!(
            "{}: no such checkpoint (pass the checkpoint.safetensors written by `experiments train`, with its config.yaml beside it)",
            checkpoint.display()
        );
    }
    let meta = lmt_train::checkpoint::metadata(checkpoint)?;
    let embedded = meta
        .get(lmt_train::checkpoint::PLAN_KEY)
        .map(|json| -> Result<(String, Resolved)> {
            let r = serde_norway::from_str(json).with_context(|| {
                format!(
                    "{}: unreadable run description in its metadata",
                    checkpoint.display()
                )
            })?;
            Ok((json.clone(), r))
        })
        .transpose()?;
    let beside = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => {
            let r: Resolved = serde_norway::from_str(&text)
                .with_context(|| format!("parsing {}", cfg_path.display()))?;
            Some((text, r))
        }
        Err(_) => None,
    };
    let (text, resolved) = match (embedded, beside) {
        (Some((_, e)), Some((text, b))) => {
            let differs: Vec<&str> = [
                ("network", e.model != b.model || e.config.model != b.config.model),
                ("method", e.config.method != b.config.method),
                ("data set", e.config.dataset != b.config.dataset),
                ("config name", e.config.name != b.config.name),
                ("profile", e.profile != b.profile),
            ]
            .into_iter()
            .filter_map(|(what, d)| d.then_some(what))
            .collect();
            if !differs.is_empty() {
                bail!(
                    "{} does not describe {}: its {} differ from the run the checkpoint records; restore the run's config.yaml or retrain",
                    cfg_path.display(),
                    checkpoint.display(),
                    differs.join(", ")
                );
            }
            (text, b)
        }
        (Some(e), None) => e,
        (None, Some(b)) => b,
        (None, None) => bail!(
            "reading {} (written by `experiments train` beside its checkpoint; {} records no run of its own)",
            cfg_path.display(),
            checkpoint.display()
        ),
    };
    let built = build(
        &resolved.model,
        resolved.config.seed,
        matches!(resolved.config.method, lmt_train::Method::Parseval { .. }),
    )?;
    built.load(checkpoint)?;
    Ok(Trained {
        config: resolved.config,
        profile: resolved.profile,
        reduced: resolved.reduced,
        validation: resolved.validation,
        config_text: text,
        built,
        dir,
    })
}

/// Builds `model` (a config's, after its profile), initialised from `seed`.
/// `parseval` gives a WRN the Parseval structure (the `parseval` method).
pub fn build(model: &ModelConfig, seed: u64, parseval: bool) -> Result<Built> {
    let varmap = VarMap::new();
    let dev = device();
    let model: Box<dyn Classifier> = match model {
        ModelConfig::KolterWong { activation } => Box::new(KolterWong::with_activation(
            &varmap,
            seed,
            act(*activation),
            &dev,
        )?),
        ModelConfig::FourCThreeF { activation } => {
            Box::new(FourCThreeF::new(&varmap, seed, act(*activation), &dev)?)
        }
        ModelConfig::WideResnet {
            depth,
            width,
            dropout,
            avg_pool_shortcut,
            activation,
        } => {
            let cfg = WideResNetCfg {
                depth: *depth,
                width: *width,
                dropout: *dropout,
                classes: 10,
                avg_pool_shortcut: *avg_pool_shortcut,
                parseval,
                activation: act(*activation),
            };
            Box::new(WideResNet::new(cfg, &varmap, seed, &dev)?)
        }
    };
    Ok(Built { model, varmap })
}

/// The layer activation of a config's activation name.
fn act(a: lmt_train::Activation) -> lmt_models::Act {
    match a {
        lmt_train::Activation::Relu => lmt_models::Act::Relu,
        lmt_train::Activation::Minmax => lmt_models::Act::MinMax,
    }
}

/// The name every output of a stand-in run carries: never "svhn".
pub fn stand_in_name(base: &str) -> String {
    format!("{base}-padded-32x32x3 (STAND-IN for svhn)")
}

/// The stand-in actually used: the one asked for, or MNIST when Fashion-MNIST is not installed.
pub fn stand_in(args: &DataArgs) -> crate::StandIn {
    let present = ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
        .iter()
        .any(|f| args.fashion_dir.join(f).is_file());
    match args.stand_in {
        crate::StandIn::Fashion if present => crate::StandIn::Fashion,
        _ => crate::StandIn::Mnist,
    }
}

/// The set behind the stand-in (see [`stand_in`]); a fallback from Fashion-MNIST says so.
pub fn stand_in_base(args: &DataArgs) -> Result<Dataset> {
    if stand_in(args) == crate::StandIn::Fashion {
        return lmt_data::load_fashion_mnist(&args.fashion_dir)
            .context("loading Fashion-MNIST for the SVHN stand-in");
    }
    if args.stand_in == crate::StandIn::Fashion {
        eprintln!(
            "WARNING: Fashion-MNIST is not installed in {} (apt-get install dataset-fashion-mnist); the SVHN stand-in falls back to MNIST",
            args.fashion_dir.display()
        );
    }
    lmt_data::load_mnist(&args.mnist_dir).context("loading MNIST for the SVHN stand-in")
}

/// Loads the data set a config names from the directories in `args`.
pub fn load_data(dataset: &str, args: &DataArgs) -> Result<Dataset> {
    match dataset {
        "mnist" => Ok(lmt_data::load_mnist(&args.mnist_dir).context("loading MNIST")?),
        "fashion-mnist" => {
            Ok(lmt_data::load_fashion_mnist(&args.fashion_dir).context("loading Fashion-MNIST")?)
        }
        "svhn" if args.svhn_stand_in => {
            let base = stand_in_base(args)?;
            Ok(Dataset {
                name: stand_in_name(&base.name),
                train: base.train.pad_and_repeat(32, 3),
                test: base.test.pad_and_repeat(32, 3),
                files: base.files,
            })
        }
        "svhn" => {
            let Some(dir) = &args.svhn_dir else {
                bail!("this run needs the official SVHN files: pass --svhn-dir DIR (or set SVHN_DIR) with train_32x32.mat and test_32x32.mat");
            };
            let labels = if args.svhn_authors_labels {
                SvhnLabels::AuthorsMinusOne
            } else {
                SvhnLabels::Digit
            };
            let d = lmt_data::load_svhn(
                dir,
                SvhnOptions {
                    labels,
                    include_extra: args.svhn_extra,
                },
            )
            .context("loading SVHN")?;
            if !d.all_verified() {
                eprintln!("WARNING: SVHN files in {} do not match the official checksums (see `experiments data-info`)", dir.display());
            }
            Ok(d)
        }
        other => bail!("unknown dataset `{other}`"),
    }
}

/// `git describe --always --dirty` of the source this binary was built from (recorded by build.rs).
pub fn git_revision() -> String {
    env!("LMT_GIT_REVISION").to_string()
}

/// The manifest of one output of this binary: everything but what differs per command comes from here.
pub fn manifest(
    experiment: String,
    profile: &str,
    reduced: bool,
    config: String,
    seed: u64,
    data: &Dataset,
    wall_seconds: f64,
) -> lmt_analysis::Manifest {
    lmt_analysis::Manifest {
        experiment,
        profile: profile.to_string(),
        reduced,
        config,
        git_revision: git_revision(),
        seed,
        dataset: data.name.clone(),
        data_checksums: data
            .files
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} ({})",
                    f.algorithm,
                    f.digest,
                    f.path.display(),
                    f.status()
                )
            })
            .collect(),
        machine: machine(),
        wall_seconds,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: None,
        provenance: None,
    }
}

/// This host as manifests describe it, and how deep products were reduced when not as gemm blocks
/// them for this host (that decides the last bits, see `lmt_models::Numerics`).
fn machine() -> String {
    let mut m = lmt_analysis::Manifest::this_machine();
    // The thread count never changes the numbers; it explains the times.
    let threads = candle_core::utils::get_num_threads();
    m.push_str(&format!(
        ", {threads} compute thread{}",
        if threads == 1 { "" } else { "s" }
    ));
    if lmt_models::numerics() == lmt_models::Numerics::Portable {
        m.push_str(&format!(
            ", portable numerics (deep products in a {}-block host's blocks)",
            lmt_models::PORTABLE_DEPTH_BLOCK
        ));
    }
    m
}

/// Creates `dir` and checks that a file can be written there, before any long work starts (a read-only
/// output directory would otherwise lose the work at the end).
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the output directory {}", dir.display()))?;
    let probe = dir.join(".lmt-write-probe");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the output directory {} is not writable; choose another with --out",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
