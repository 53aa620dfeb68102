//! `table1`: the paper's Table 1 (clean accuracy and accuracy under C&W at L2 sizes 0.2, 0.5 and 1.0
//! for weight decay, Parseval, spectral norm and LMT, plus the average-pool LMT WRN), on the official
//! SVHN files or, without them, on the named stand-in; beside the paper's C&W column, accuracy under the
//! strongest attack we have and certified accuracy, each with its 95% Wilson interval, and a figure.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lmt_analysis::plot::{self, LineChart, Series};
use lmt_analysis::Table;
use lmt_attacks::PgdConfig;
use lmt_eval::metrics::{certified_at, median, robust_at, Proportion};
use lmt_eval::{AttackRow, AttackSpec, CertificateRow};

use crate::figures::{budget_label, worst_by_index};
use crate::pipeline::{ensure_attacked, ensure_certified, ensure_trained, AnalysisArgs, Budget};
use crate::run::{load_data, manifest, read_resolved};

/// `table1` and its flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Table1Args {
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Train only these rows (config names, comma-separated, e.g. svhn_lmt_c001). The other rows are
    /// read from their run directories as they stand: never trained, their certificates and attacks
    /// reused where they cover the budget (committed results need no checkpoint). The table's manifest
    /// names the rows this command could train.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Train, certify and attack the --only rows, then stop without writing the table (what each
    /// process of --jobs runs).
    #[arg(long, hide = true)]
    pub prepare_only: bool,
    /// With --prepare-only: only this stage of the rows (each process of --jobs runs one).
    #[arg(long, hide = true, value_enum, requires = "prepare_only")]
    pub stage: Option<Stage>,
}

/// One stage of preparing a Table 1 row; `--jobs` runs each in its own process, as soon as the stages
/// it reads are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Training and certification (the attacks' consistency check reads the certificates).
    Train,
    /// C&W, the paper's column.
    Cw,
    /// Clipped DeepFool.
    Deepfool,
    /// PGD-L2 at each size, on the points C&W and DeepFool left.
    Pgd,
}

impl Stage {
    /// Every stage, in the order one process runs them.
    const ALL: [Stage; 4] = [Stage::Train, Stage::Cw, Stage::Deepfool, Stage::Pgd];

    /// The stages whose results this one reads.
    fn needs(self) -> &'static [Stage] {
        match self {
            Stage::Train => &[],
            Stage::Cw | Stage::Deepfool => &[Stage::Train],
            Stage::Pgd => &[Stage::Cw, Stage::Deepfool],
        }
    }

    /// The flag value naming it.
    fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Cw => "cw",
            Stage::Deepfool => "deepfool",
            Stage::Pgd => "pgd",
        }
    }
}

/// `table1` as `reproduce` runs it: every row trained, certified and attacked unless done already.
pub fn table1(args: &AnalysisArgs) -> Result<()> {
    table1_rows(&Table1Args {
        analysis: args.clone(),
        only: Vec::new(),
        prepare_only: false,
        stage: None,
    })
}

/// One Table 1 row: (method, config, paper's clean / 0.2 / 0.5 / 1.0 accuracy in %, paper's median
/// certified radius where it reports one).
pub type Table1Row = (&'static str, &'static str, Option<[f64; 4]>, Option<f64>);

/// Table 1's rows, plus the average-pool LMT run the paper reports in the text.
pub const TABLE1: [Table1Row; 5] = [
    (
        "weight decay",
        "svhn_weight_decay",
        Some([98.31, 72.38, 20.98, 2.02]),
        None,
    ),
    (
        "Parseval",
        "svhn_parseval",
        Some([98.30, 71.35, 17.92, 0.94]),
        None,
    ),
    (
        "spectral norm",
        "svhn_spectral_norm",
        Some([98.27, 73.66, 20.35, 1.39]),
        None,
    ),
    (
        "LMT (c 0.01)",
        "svhn_lmt_c001",
        Some([96.38, 86.90, 55.11, 17.69]),
        Some(0.029),
    ),
    ("LMT avg-pool (c 0.1)", "svhn_avg_lmt_c01", None, Some(0.08)),
];

/// The L2 sizes of Table 1.
pub const SIZES: [f64; 3] = [0.2, 0.5, 1.0];

/// The strongest attack at one size: PGD-L2 at radius `eps` on the points that C&W and clipped DeepFool
/// did not already break within `eps` (a point broken at a smaller size is broken here too).
fn strongest_pgd(
    a: &AnalysisArgs,
    budget: &Budget,
    ckpt: &Path,
    points: usize,
    eps: f64,
) -> Result<()> {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let mut cfg = PgdConfig::new(eps, budget.pgd_steps);
    cfg.restarts = budget.pgd_restarts;
    let spec = AttackSpec::Pgd(cfg.clone());
    let label = spec.label();
    let step = format!("{}, on the points C&W and DeepFool left", spec.describe());
    let file = dir.join(format!("attack_{label}.csv"));
    if crate::pipeline::reusable(&file, ckpt, &step, points) {
        return Ok(());
    }
    let started = Instant::now();
    let worst = worst_by_index(dir, points)?;
    let todo: Vec<usize> = (0..points)
        .filter(|&i| worst[i].is_none_or(|d| robust_at(d, eps)))
        .collect();
    let s = crate::subject::Subject::load(&crate::subject::ModelArgs::checkpoint(ckpt), &a.data)?;
    eprintln!(
        "table1: PGD-L2 at {eps} ({} steps, {} restarts) on the {} of {points} points nothing broke yet",
        cfg.steps,
        cfg.restarts,
        todo.len()
    );
    let mut rows = lmt_eval::attack(
        s.model.as_ref(),
        &s.data.test,
        &todo,
        &spec,
        100,
        &mut |_| {},
    )?;
    let certs: Vec<CertificateRow> = lmt_eval::read_csv_file(&dir.join("certificates.csv"))?;
    let violations = lmt_eval::check_against(&mut rows, &certs)?;
    if !violations.is_empty() {
        bail!("SOUNDNESS VIOLATION: PGD at {eps} succeeded inside certified radii: {violations:?}");
    }
    lmt_analysis::write_atomic(&file, &lmt_eval::to_csv(&rows)?)?;
    let wall = started.elapsed().as_secs_f64();
    s.manifest(
        format!("attack {label} {}", s.name),
        true,
        cfg.seed,
        wall,
        Some((step, points)),
    )
    .write(&crate::pipeline::manifest_of(&file))?;
    Ok(())
}

/// `--jobs N`: trains, certifies and attacks the rows to recompute in up to N child processes of this
/// executable at once (`table1 --only ROW --prepare-only --stage S`), each with 1/N of the threads, its
/// output forwarded line by line under the row's and stage's names. A stage starts as soon as a process
/// is free and the stages it reads are done, trainings first, then every row's C&W, DeepFool and PGD:
/// whole rows on two processes would leave one core idle for the last row. Afterwards every row is
/// reusable, so the table is assembled as with one job.
fn prepare_in_parallel(a: &AnalysisArgs, only: &[String]) -> Result<()> {
    let rows: Vec<&str> = TABLE1
        .iter()
        .map(|r| r.1)
        .filter(|c| only.is_empty() || only.iter().any(|o| o == c))
        .collect();
    let jobs = usize::try_from(a.jobs).unwrap_or(usize::MAX);
    if jobs <= 1 || rows.is_empty() {
        return Ok(());
    }
    let jobs = jobs.min(rows.len() * Stage::ALL.len());
    let threads = (candle_core::utils::get_num_threads() / jobs).max(1);
    let exe = std::env::current_exe().context("table1 --jobs: locating this executable")?;
    eprintln!(
        "table1: {} rows in stages, up to {jobs} processes of {threads} thread(s) at once (--jobs {})",
        rows.len(),
        a.jobs
    );
    let state = Mutex::new(StagePlan::new(&rows));
    let changed = std::sync::Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let task = {
                    let mut st = lock(&state);
                    loop {
                        if let Some(t) = st.start_next() {
                            break Some((t, st.tasks[t]));
                        }
                        if st.running == 0 || !st.failed.is_empty() {
                            break None;
                        }
                        st = changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some((t, (config, stage))) = task else {
                    changed.notify_all();
                    break;
                };
                let result = prepare_in_child(&exe, a, config, stage, threads);
                lock(&state).finish(
                    t,
                    result.map_err(|e| format!("{config} {}: {e:#}", stage.name())),
                );
                changed.notify_all();
            });
        }
    });
    let st = state.into_inner().unwrap_or_else(|e| e.into_inner());
    if !st.failed.is_empty() {
        bail!(
            "table1 --jobs: {} (run the same command again: finished work is reused)",
            st.failed.join("; ")
        );
    }
    Ok(())
}

/// What `--jobs` has to run and how far it got: every (row, stage), and per task whether it is waiting,
/// running or done.
#[derive(Debug)]
struct StagePlan<'a> {
    tasks: Vec<(&'a str, Stage)>,
    state: Vec<TaskState>,
    running: usize,
    failed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Waiting,
    Running,
    Done,
}

impl<'a> StagePlan<'a> {
    /// Every stage of every row, in the order they are preferred: stage by stage (all trainings
    /// first), rows in table order within a stage.
    fn new(rows: &[&'a str]) -> Self {
        let tasks: Vec<(&str, Stage)> = Stage::ALL
            .iter()
            .flat_map(|&s| rows.iter().map(move |&r| (r, s)))
            .collect();
        let state = vec![TaskState::Waiting; tasks.len()];
        StagePlan {
            tasks,
            state,
            running: 0,
            failed: Vec::new(),
        }
    }

    /// Marks the first waiting task whose needs are done as running and returns it; none after a
    /// failure (the running ones finish, no new one starts).
    fn start_next(&mut self) -> Option<usize> {
        if !self.failed.is_empty() {
            return None;
        }
        let done = |row: &str, stage: Stage| {
            self.tasks
                .iter()
                .zip(&self.state)
                .any(|(&(r, s), &st)| r == row && s == stage && st == TaskState::Done)
        };
        let next = (0..self.tasks.len()).find(|&i| {
            let (row, stage) = self.tasks[i];
            self.state[i] == TaskState::Waiting && stage.needs().iter().all(|&n| done(row, n))
        })?;
        self.state[next] = TaskState::Running;
        self.running += 1;
        Some(next)
    }

    /// Records the end of a running task.
    fn finish(&mut self, task: usize, result: std::result::Result<(), String>) {
        self.running -= 1;
        match result {
            Ok(()) => self.state[task] = TaskState::Done,
            Err(e) => self.failed.push(e),
        }
    }
}

/// The data behind `m`, also after another thread panicked holding it (the data stay consistent here).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stage of one row of `--jobs` in a child process; returns when it exits, an error unless it
/// succeeded.
fn prepare_in_child(
    exe: &Path,
    a: &AnalysisArgs,
    config: &str,
    stage: Stage,
    threads: usize,
) -> Result<()> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("table1")
        .args(child_flags(a))
        .args(["--only", config, "--prepare-only", "--jobs", "1"])
        .args(["--stage", stage.name()])
        .env("RAYON_NUM_THREADS", threads.to_string())
        // The global flags, which child_flags does not carry: same device, same numerics.
        .env("LMT_DEVICE", crate::device::spec())
        .env("LMT_NUMERICS", lmt_models::numerics().name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let tag = format!("{config} {}", stage.name());
    eprintln!("table1: [{tag}] started");
    let (out, err) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(o) = out {
                forward_lines(o, &tag);
            }
        });
        if let Some(e) = err {
            forward_lines(e, &tag);
        }
    });
    let status = child.wait().context("waiting for the child process")?;
    if !status.success() {
        bail!("its process failed ({status}; its output is above, prefixed [{tag}])");
    }
    eprintln!(
        "table1: [{tag}] done in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Copies a child's output to our stderr line by line, each prefixed with its row and stage.
fn forward_lines(r: impl Read, tag: &str) {
    for line in BufReader::new(r).lines().map_while(std::io::Result::ok) {
        eprintln!("[{tag}] {line}");
    }
}

/// The flags that give a child process the analysis and data settings of `a`.
fn child_flags(a: &AnalysisArgs) -> Vec<OsString> {
    let d = &a.data;
    let mut f: Vec<OsString> = vec![
        "--profile".into(),
        a.profile.clone().into(),
        "--results".into(),
        a.results.clone().into(),
        "--figures".into(),
        a.figures.clone().into(),
        "--mnist-dir".into(),
        d.mnist_dir.clone().into(),
        "--fashion-dir".into(),
        d.fashion_dir.clone().into(),
        "--stand-in".into(),
        match d.stand_in {
            crate::StandIn::Fashion => "fashion",
            crate::StandIn::Mnist => "mnist",
        }
        .into(),
    ];
    if let Some(dir) = &d.svhn_dir {
        f.extend(["--svhn-dir".into(), dir.clone().into()]);
    }
    for (on, flag) in [
        (d.svhn_extra, "--svhn-extra"),
        (d.svhn_authors_labels, "--svhn-authors-labels"),
        (d.svhn_stand_in, "--svhn-stand-in"),
    ] {
        if on {
            f.push(flag.into());
        }
    }
    f
}

/// A proportion as three CSV cells (percent, interval low, interval high).
fn cells(p: Proportion) -> [String; 3] {
    let (lo, hi) = p.wilson95();
    [100.0 * p.value(), 100.0 * lo, 100.0 * hi].map(|v| v.to_string())
}

/// Trains (or resumes), certifies and attacks every Table 1 model, then writes `table1.csv` (SVHN) or
/// `table1_standin.csv` and the figure; fails loudly when certified > under the strongest attack > clean.
pub fn table1_rows(args: &Table1Args) -> Result<()> {
    let started = Instant::now();
    for name in &args.only {
        if !TABLE1.iter().any(|r| r.1 == name) {
            bail!(
                "--only {name}: not a Table 1 config (one of {})",
                TABLE1.map(|r| r.1).join(", ")
            );
        }
    }
    let mut a = args.analysis.clone();
    if a.data.svhn_dir.is_none() {
        a.data.svhn_stand_in = true;
        let base = match crate::run::stand_in(&a.data) {
            crate::StandIn::Fashion => "fashion-mnist",
            crate::StandIn::Mnist => "mnist",
        };
        eprintln!(
            "table1: no --svhn-dir (or SVHN_DIR): running on the STAND-IN {} — these are NOT SVHN numbers",
            crate::run::stand_in_name(base)
        );
    }
    if a.jobs > 1 && !args.prepare_only {
        prepare_in_parallel(&a, &args.only)?;
    }
    let budget = Budget::of(&a.profile);
    let mut header: Vec<String> = ["method", "dataset", "network", "points", "cw_points"]
        .map(String::from)
        .to_vec();
    let acc = |h: &mut Vec<String>, name: String| {
        h.push(name.clone());
        h.push(format!("{name}_lo"));
        h.push(format!("{name}_hi"));
    };
    acc(&mut header, "clean_accuracy".into());
    for kind in ["cw", "strongest", "certified"] {
        for e in SIZES {
            acc(&mut header, format!("{kind}_accuracy_{e:.1}"));
        }
    }
    for h in [
        "median_certified_radius",
        "cw_failures",
        "departures",
        "paper_clean",
        "paper_cw_0.2",
        "paper_cw_0.5",
        "paper_cw_1.0",
        "paper_median_radius",
        "budget",
    ] {
        header.push(h.into());
    }
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    let mut reduced = true; // the paper attacks all 26,032 SVHN test images with C&W; we never do on CPU
    let mut dataset = String::new();
    let mut problems = Vec::new();
    let mut panels = Vec::new();
    for (method, config, paper, paper_radius) in TABLE1 {
        let recompute = args.only.is_empty() || args.only.iter().any(|o| o == config);
        if args.prepare_only && !recompute {
            continue;
        }
        eprintln!(
            "table1: {method} ({config}){}",
            if recompute {
                ""
            } else {
                ", read as it stands (not in --only)"
            }
        );
        let ckpt = if recompute {
            ensure_trained(&a, config)?
        } else {
            crate::pipeline::run_dir(&a, config).join("checkpoint.safetensors")
        };
        let dir = ckpt.parent().unwrap_or(Path::new("."));
        let trained = read_resolved(dir)?;
        if trained.profile != a.profile {
            bail!(
                "{}: a run of the {} profile, not {}",
                dir.display(),
                trained.profile,
                a.profile
            );
        }
        // A row read as it stands with a checkpoint of an unfinished run (an interrupted `table1`)
        // would be certified and attacked half-trained.
        if !recompute && ckpt.is_file() {
            let done = lmt_train::checkpoint::position(&ckpt)?.epoch;
            if done < trained.epochs {
                bail!(
                    "{}: an unfinished run ({done} of {} epochs); name {config} in --only to finish it, or remove the checkpoint to read its committed results",
                    ckpt.display(),
                    trained.epochs
                );
            }
        }
        let data = load_data(&trained.config.dataset, &a.data)?;
        let points = budget.table1_points.min(data.test.len());
        let cw_points = budget.table1_cw_points.min(points);
        let runs = |s: Stage| args.stage.is_none_or(|only| only == s);
        let derived = || -> Result<()> {
            if runs(Stage::Train) {
                ensure_certified(&a, &ckpt, Some(points))?;
            }
            if runs(Stage::Cw) {
                ensure_attacked(&a, &ckpt, "cw", cw_points, |x| {
                    x.cw_iterations = budget.cw_iterations;
                    x.cw_binary_steps = budget.cw_binary_steps;
                })?;
            }
            if runs(Stage::Deepfool) {
                ensure_attacked(&a, &ckpt, "deepfool_clip", points, |_| {})?;
            }
            if runs(Stage::Pgd) {
                for e in SIZES {
                    strongest_pgd(&a, &budget, &ckpt, points, e)?;
                }
            }
            Ok(())
        };
        if recompute {
            derived()?;
        } else {
            derived().with_context(|| {
                format!(
                    "{method} is read as it stands (not in --only), but {} lacks some of its certificates or attacks at this budget; name {config} in --only to recompute it",
                    dir.display()
                )
            })?;
        }
        if args.prepare_only {
            continue;
        }
        reduced |= trained.reduced;
        dataset = data.name.clone();
        let certs: Vec<CertificateRow> = lmt_eval::read_csv_file(&dir.join("certificates.csv"))?;
        let cw: Vec<AttackRow> = lmt_eval::read_csv_file(&dir.join("attack_cw.csv"))?;
        if certs.len() < points || cw.len() < cw_points {
            bail!(
                "{}: {} certificates and {} C&W rows, need {points} and {cw_points}",
                dir.display(),
                certs.len(),
                cw.len()
            );
        }
        let (certs, cw) = (&certs[..points], &cw[..cw_points]);
        let worst = worst_by_index(dir, points)?;
        let clean = Proportion::count(certs.iter().map(|c| c.prediction == Some(c.label)));
        let mut row = vec![
            method.to_string(),
            data.name.clone(),
            format!("WRN-16-{}", wrn_width(&trained)),
            points.to_string(),
            cw_points.to_string(),
        ];
        row.extend(cells(clean));
        let cw_at = |e: f64| Proportion::count(cw.iter().map(|r| robust_at(r.distance, e)));
        let strongest_at =
            |e: f64| Proportion::count(worst.iter().map(|w| w.is_none_or(|d| robust_at(d, e))));
        let certified_at_e =
            |e: f64| Proportion::count(certs.iter().map(|c| certified_at(c.radius, e)));
        // Each curve starts at size 0: clean accuracy for the attacks, certified at 0 for the bound.
        let curve = |name: String, f: &dyn Fn(f64) -> Proportion, at0: f64, color, dashed| Series {
            name,
            points: std::iter::once((0.0, at0))
                .chain(SIZES.iter().map(|&e| (e, f(e).value())))
                .collect(),
            color,
            dashed,
        };
        let cw_name = format!(
            "C&W {}x{} ({cw_points} points)",
            budget.cw_iterations, budget.cw_binary_steps
        );
        let mut series = vec![
            curve(
                format!("strongest attack ({points} points)"),
                &strongest_at,
                clean.value(),
                1,
                false,
            ),
            curve(
                cw_name,
                &cw_at,
                Proportion::count(cw.iter().map(|r| robust_at(r.distance, 0.0))).value(),
                2,
                true,
            ),
            curve(
                format!("certified ({points} points)"),
                &certified_at_e,
                certified_at_e(0.0).value(),
                0,
                false,
            ),
        ];
        for f in [
            &cw_at as &dyn Fn(f64) -> Proportion,
            &strongest_at,
            &certified_at_e,
        ] {
            for e in SIZES {
                row.extend(cells(f(e)));
            }
        }
        // Every size: certified <= under the strongest attack <= clean (on the same points), and on the
        // C&W points, certified <= under C&W <= clean.
        for e in SIZES {
            let (c, s) = (certified_at_e(e).k, strongest_at(e).k);
            let cw_certified = certs[..cw_points]
                .iter()
                .filter(|c| certified_at(c.radius, e))
                .count();
            let cw_clean = certs[..cw_points]
                .iter()
                .filter(|c| c.prediction == Some(c.label))
                .count();
            if c > s || s > clean.k || cw_certified > cw_at(e).k || cw_at(e).k > cw_clean {
                problems.push(format!(
                    "{method} at {e}: certified {c}, strongest-attack {s}, clean {} of {points}; C&W {} of {cw_points}",
                    clean.k,
                    cw_at(e).k
                ));
            }
        }
        if let Some(pv) = paper {
            series.push(Series {
                name: "the paper's C&W accuracy, on SVHN".into(),
                points: std::iter::once(0.0)
                    .chain(SIZES)
                    .zip(pv.iter().map(|v| v / 100.0))
                    .collect(),
                color: 3,
                dashed: true,
            });
        }
        let radii: Vec<f64> = certs.iter().map(|c| c.radius).collect();
        let p = |i: usize| paper.map(|v| v[i].to_string()).unwrap_or_default();
        row.extend([
            median(&radii).to_string(),
            cw.iter()
                .filter(|r| r.distance.is_none())
                .count()
                .to_string(),
            trained.departures.join("; "),
            p(0),
            p(1),
            p(2),
            p(3),
            paper_radius.map(|r| r.to_string()).unwrap_or_default(),
            budget_label(&a.profile, true),
        ]);
        t.push(row);
        panels.push(LineChart {
            title: format!(
                "{method}, WRN-16-{} (clean {:.1}%)",
                wrn_width(&trained),
                100.0 * clean.value()
            ),
            x_label: "L2 size of the perturbation".into(),
            y_label: "accuracy".into(),
            x: (0.0, 1.0),
            y: (0.0, 1.0),
            series,
        });
    }
    if args.prepare_only {
        return Ok(());
    }
    let root = a.results.join(&a.profile);
    let name = if a.data.svhn_stand_in {
        "table1_standin"
    } else {
        "table1"
    };
    t.write(&root.join(format!("{name}.csv")))?;
    let tag = budget_label(&a.profile, reduced);
    plot::line_panels(
        &a.figures.join(&a.profile).join(name),
        &format!("Table 1 on {dataset} [{tag}]: accuracy under attack (upper bounds) and certified (lower bounds)"),
        &panels,
    )?;
    println!("Table 1 on {dataset} ({tag}): accuracies in % with 95% Wilson intervals; accuracy under an attack is an empirical upper bound on robust accuracy, certified accuracy a guaranteed lower bound");
    print!("{}", t.to_csv());
    let data = load_data("svhn", &a.data)?;
    manifest(
        name.into(),
        &a.profile,
        reduced,
        format!("{budget:?}; accuracy under an attack at size e = fraction of the first points whose adversarial distance exceeds e (failures count as robust); strongest = C&W (first {} points), clipped DeepFool and PGD-L2 at e must all fail within e{}", budget.table1_cw_points, only_note(&args.only)),
        0,
        &data,
        started.elapsed().as_secs_f64(),
    )
    .write(&root.join(format!("{name}_manifest.json")))?;
    if !problems.is_empty() {
        bail!("SOUNDNESS VIOLATION in Table 1: {}", problems.join("; "));
    }
    Ok(())
}

/// What the manifest says of `--only`: which rows this command could train, the others read as they
/// stood (each run directory's manifests carry their own revision, machine and times).
fn only_note(only: &[String]) -> String {
    if only.is_empty() {
        String::new()
    } else {
        format!(
            "; rows trained by this command (--only): {}; the others read from their run directories as they stood (see their own manifests)",
            only.join(", ")
        )
    }
}

/// The trained WRN's width factor (after its profile).
fn wrn_width(t: &crate::run::Resolved) -> usize {
    match t.model {
        lmt_train::ModelConfig::WideResnet { width, .. } => width,
        lmt_train::ModelConfig::KolterWong { .. } | lmt_train::ModelConfig::FourCThreeF { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{Stage, StagePlan};

    /// Two processes on two rows: both trainings first, then each row's C&W and DeepFool only after its
    /// training, PGD only after both; nothing runs twice and everything runs.
    #[test]
    fn stages_start_when_their_needs_are_done() {
        let mut p = StagePlan::new(&["a", "b"]);
        /// Starts the next two tasks and checks they are `stage` of rows a and b.
        fn two(p: &mut StagePlan, stage: Stage) -> (usize, usize) {
            let (t1, t2) = (p.start_next().unwrap(), p.start_next().unwrap());
            assert_eq!((p.tasks[t1], p.tasks[t2]), (("a", stage), ("b", stage)));
            (t1, t2)
        }
        let (t1, t2) = two(&mut p, Stage::Train);
        assert_eq!(p.start_next(), None, "nothing else is ready");
        p.finish(t2, Ok(()));
        let t = p.start_next().unwrap();
        assert_eq!(p.tasks[t], ("b", Stage::Cw));
        p.finish(t1, Ok(()));
        let u = p.start_next().unwrap();
        assert_eq!(p.tasks[u], ("a", Stage::Cw));
        p.finish(t, Ok(()));
        p.finish(u, Ok(()));
        let (d1, d2) = two(&mut p, Stage::Deepfool);
        assert_eq!(p.start_next(), None, "PGD waits for DeepFool");
        p.finish(d2, Ok(()));
        let g = p.start_next().unwrap();
        assert_eq!(p.tasks[g], ("b", Stage::Pgd));
        p.finish(d1, Ok(()));
        p.finish(g, Ok(()));
        let h = p.start_next().unwrap();
        assert_eq!(p.tasks[h], ("a", Stage::Pgd));
        p.finish(h, Ok(()));
        assert_eq!((p.start_next(), p.running), (None, 0));
    }

    /// After a failure no new stage starts; the stages of the other rows that were running finish.
    #[test]
    fn a_failure_starts_nothing_new() {
        let mut p = StagePlan::new(&["a", "b"]);
        let (t1, t2) = (p.start_next().unwrap(), p.start_next().unwrap());
        p.finish(t1, Err("a train: broke".into()));
        assert_eq!(p.start_next(), None);
        p.finish(t2, Ok(()));
        assert_eq!((p.start_next(), p.running), (None, 0));
        assert_eq!(p.failed, vec!["a train: broke".to_string()]);
    }
}
