//! Records the git revision the binary is built from, so every manifest names the code that actually ran
//! (asking git at run time would name whatever the checkout holds by then). The revision is marked
//! `-dirty` when a tracked file outside `results/` and `figures/` differs from it: regenerating the
//! committed results in a checkout does not change the code that produces them.
fn main() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let changed = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)results",
                ":(top,exclude)figures",
            ]);
            match changed {
                Some(c) if c.is_empty() => head,
                _ => format!("{head}-dirty"),
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=LMT_GIT_REVISION={rev}");
    for path in ["../.git/HEAD", "../.git/index", "../.git/refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
