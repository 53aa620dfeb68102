//! Records the git revision the binary is built from, so every manifest names the code that actually ran
//! (asking git at run time would name whatever the checkout holds by then).
fn main() {
    let rev = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LMT_GIT_REVISION={rev}");
    for path in ["../.git/HEAD", "../.git/index", "../.git/refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
