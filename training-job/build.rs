//! Embeds the git commit for lineage and lets the binary find libxgboost (and libtorch) without LD_LIBRARY_PATH.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MLOPS_CODE_COMMIT");
    // Only the trainer (feature `train`) links native libraries.
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_some() {
        if let Ok(dir) = std::env::var("XGBOOST_LIB_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
        // libtorch (feature `torch`): the wheel's torch/lib, found the same way.
        if let Ok(dir) = std::env::var("LIBTORCH") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
    }
    let commit = std::env::var("MLOPS_CODE_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = commit.map_or("unknown".to_string(), |c| {
        if dirty { format!("{c}-dirty") } else { c }
    });
    println!("cargo:rustc-env=MLOPS_BUILD_COMMIT={commit}");
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        && out.status.success()
    {
        let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
    }
}
