//! Outputs for lmt-rs: the [`Manifest`] every generated result carries, [`write_atomic`], [`Table`]
//! (named columns of formatted cells, CSV in and out through the `csv` crate), and figures ([`plot`]:
//! line and log-scale bar charts, image grids, each as PNG and SVG with an embedded font). The metrics
//! themselves live in lmt-eval.
//!
//! **Invariant:** the only crate (besides `experiments`) that writes result files.
#![deny(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod plot;
mod table;

pub use table::Table;

/// SHA-256 of a file's bytes, hex (the key of derived files, see [`Provenance`]).
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| AnalysisError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Failure to write an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// An I/O error on a named file.
    #[error(
        "cannot write {path}: {source}; check that the directory is writable and the disk not full"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A CSV that cannot be read as the table the caller expects.
    #[error("{path}: {detail}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A figure could not be drawn.
    #[error("drawing {path}: {detail}")]
    Plot {
        /// The figure file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Serialisation failed.
    #[error("cannot serialise {what}: {source}")]
    Json {
        /// What was serialised.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Result alias of lmt-analysis.
pub type Result<T> = std::result::Result<T, AnalysisError>;

/// The provenance of one generated result: enough to regenerate it and to know what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The experiment (e.g. `fig4`, `train mnist_lmt_c1`).
    pub experiment: String,
    /// `smoke`, `quick` or `paper`; anything but `paper` is a reduced run.
    pub profile: String,
    /// True when budgets are below the paper's; every output of such a run says so.
    pub reduced: bool,
    /// The resolved configuration, as text.
    pub config: String,
    /// `git describe --always --dirty` of the code that ran.
    pub git_revision: String,
    /// The seed.
    pub seed: u64,
    /// Data set name as written in outputs (a stand-in says so, e.g. `mnist-padded-32x32x3 (stand-in for svhn)`).
    pub dataset: String,
    /// Digests of the data files read.
    pub data_checksums: Vec<String>,
    /// Machine description (OS, architecture, cores).
    pub machine: String,
    /// Wall time of the run in seconds.
    pub wall_seconds: f64,
    /// The exact command line.
    pub command: String,
    /// The model file evaluated and its digest, when it is not a checkpoint of this run (an ONNX import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What a derived file was computed from; it is reused only when this matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// The key of a derived file (certificates, attack results): the model it was computed on, how, and on
/// how many points. A pipeline reuses the file only when all three match what it would compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// SHA-256 of the checkpoint or model file.
    pub model_sha256: String,
    /// The computation in words (bound method and proposition; the attack and its settings).
    pub step: String,
    /// Test points covered (the first `points` of the test set, or those listed in the file).
    pub points: usize,
}

impl Manifest {
    /// The provenance in the manifest at `path`, if the file exists and records one.
    pub fn provenance_at(path: &Path) -> Option<Provenance> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str::<Manifest>(&text).ok()?.provenance
    }
}

impl Manifest {
    /// The machine this process runs on, in words: OS, architecture, CPU model, family and model
    /// numbers, cores, the vector extensions the gemm kernels choose between and the L2 size. The last
    /// bits of training follow the CPU, so two hosts with the same model name must stay apart here.
    pub fn this_machine() -> String {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().map(str::trim) == Some(name))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        };
        let cpu = field("model name").unwrap_or_else(|| "unknown CPU".to_string());
        let mut text = format!(
            "{} {}, {cpu}, {cores} logical cores",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let (Some(family), Some(model)) = (field("cpu family"), field("model")) {
            text.push_str(&format!(", family {family} model {model}"));
        }
        if let Some(flags) = field("flags") {
            let has: Vec<&str> = ["avx2", "fma", "avx512f"]
                .into_iter()
                .filter(|f| flags.split_whitespace().any(|x| x == *f))
                .collect();
            text.push_str(&format!(", vector extensions: {}", has.join(" ")));
        }
        if let Ok(l2) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size") {
            text.push_str(&format!(", L2 {} per core", l2.trim()));
        }
        text.push_str(&format!(", gemm depth block {}", gemm_depth_block()));
        text
    }

    /// The current git revision of `repo` (`unknown` outside a git checkout).
    pub fn git_revision(repo: &Path) -> String {
        std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Writes the manifest as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| AnalysisError::Json {
            what: "manifest",
            source,
        })?;
        write_atomic(path, &json)
    }
}

/// The longest depth (512 · 2^j, rounded down) that the gemm crate's f32 kernels sum in one pass on
/// this host. gemm sizes its depth blocks from the L1 cache it reads at run time and adds the blocks'
/// partial sums afterwards, so hosts with different blocks differ in the last bits of every matmul
/// deeper than 512 (the Kolter-Wong network's first dense layer, the WRN's 64-channel convolutions):
/// training is deterministic per depth block, not across them. Measured, not derived from the cache.
pub fn gemm_depth_block() -> usize {
    static BLOCK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        let mut block = 512;
        while block < 1 << 16 && !gemm_splits_depth(2 * block) {
            block *= 2;
        }
        block
    })
}

/// Whether gemm splits a depth of `k` into blocks: every column of the right operand holds 2^24 at
/// depth 0 and ones in the second half, so one sequential pass absorbs each 1 into 2^24 (round to
/// even) while a block boundary at or before k/2 adds the ones up first and keeps them.
fn gemm_splits_depth(k: usize) -> bool {
    // Above gemm's small-size path (m and n at most 64), which caps its block at 512 on every host.
    const N: usize = 65;
    let big = 16_777_216f32;
    let lhs = vec![1f32; N * k];
    let mut rhs = vec![0f32; k * N];
    for j in 0..N {
        rhs[j] = big;
        for d in k / 2..k {
            rhs[d * N + j] = 1.0;
        }
    }
    let mut dst = vec![0f32; N * N];
    // SAFETY: all three matrices are row-major and dense with the strides given (lhs N x k, rhs k x N,
    // dst N x N), so every index gemm touches lies inside its vector; dst aliases neither operand.
    unsafe {
        gemm::gemm(
            N,
            N,
            k,
            dst.as_mut_ptr(),
            1,
            N as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            N as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
    dst[0] != big
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a reader
/// (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| AnalysisError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/manifest.json");
        let m = Manifest {
            experiment: "fig3".into(),
            profile: "smoke".into(),
            reduced: true,
            config: "epochs: 1".into(),
            git_revision: Manifest::git_revision(Path::new(env!("CARGO_MANIFEST_DIR"))),
            seed: 3,
            dataset: "mnist".into(),
            data_checksums: vec!["sha256 ab".into()],
            machine: Manifest::this_machine(),
            wall_seconds: 1.5,
            command: "experiments fig3".into(),
            model: None,
            provenance: None,
        };
        m.write(&path).unwrap();
        let back: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, m);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.json"]);
    }

    /// Two hosts with one CPU model name differ in the last bits of training; the manifest must tell
    /// them apart by what the kernels depend on.
    #[test]
    fn the_machine_names_the_vector_extensions_and_the_l2_size() {
        let m = Manifest::this_machine();
        assert!(m.contains("logical cores"), "{m}");
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if let Some(flags) = info.lines().find(|l| l.starts_with("flags")) {
            assert!(m.contains("vector extensions:"), "{m}");
            for f in ["avx2", "avx512f"] {
                let has = flags.split_whitespace().any(|x| x == f);
                assert_eq!(m.contains(&format!(" {f}")), has, "{f} in {m}");
            }
        }
        if let Ok(l2) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size") {
            assert!(m.contains(&format!(", L2 {} per core", l2.trim())), "{m}");
        }
        assert!(
            m.ends_with(&format!("gemm depth block {}", gemm_depth_block())),
            "{m}"
        );
    }

    /// The probe against the arithmetic it relies on: a depth of 512 is always one pass (gemm's floor),
    /// the answer is a power of two times 512, and a depth past it is split.
    #[test]
    fn the_gemm_depth_block_is_measured_from_the_kernels() {
        assert!(!gemm_splits_depth(512));
        let block = gemm_depth_block();
        assert!(block >= 512 && block.is_power_of_two(), "{block}");
        assert!(gemm_splits_depth(4 * block));
    }

    #[test]
    fn unwritable_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let e = write_atomic(&blocker.join("out.json"), b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out.json") && e.contains("cannot write"), "{e}");
    }
}
