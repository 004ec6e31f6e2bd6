//! The NVRTC disk cache written by two processes, and by two threads of one process, at the
//! same time stays valid: every cubin in it equals a fresh compile and no temporary file is left
//! (writes go to a unique temporary name, then an atomic rename). Needs NVRTC only, no GPU (CI
//! installs it from PyPI); prints `skipped:` without it, unless `TESSERA_REQUIRE_NVRTC=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_cuda::compile::{cached_cubin_in, compile_cubin, KernelVariant};
use tessera_cuda::kernels::plannable_variants;
use tessera_cuda::plan::ArchSpec;

/// Set in the child processes: the folder to fill.
const CHILD_DIR: &str = "TESSERA_TEST_CACHE_CHILD_DIR";
const ARCH: &str = "sm_90a";

fn nvrtc_or_skip() -> bool {
    match &tessera_cuda::probe().nvrtc {
        Ok(_) => true,
        Err(why) => {
            if std::env::var("TESSERA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("TESSERA_REQUIRE_NVRTC=1 but {why}");
            }
            println!("skipped: {why}");
            false
        }
    }
}

/// A few small variants (compiling every one would take minutes).
fn variants() -> Vec<KernelVariant> {
    let hopper = ArchSpec::from_compute_capability(9, 0, 132).expect("sm_90 is known");
    let all = plannable_variants(&hopper);
    let mut chosen: Vec<KernelVariant> = Vec::new();
    for v in all {
        if !chosen.iter().any(|c| c.source.file == v.source.file) {
            chosen.push(v);
        }
    }
    chosen.retain(|v| v.source.file.contains("quantize") || v.source.file.contains("append"));
    chosen
}

fn fill(dir: &Path) {
    for v in variants() {
        let (cubin, _) = cached_cubin_in(&v, ARCH, Some(dir)).unwrap();
        assert!(cubin.len() > 100);
    }
}

/// Every file is a complete cubin equal to a fresh compile; no temporary file is left.
fn check(dir: &Path) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let leftovers: Vec<&PathBuf> = names
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "cubin"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let variants = variants();
    assert_eq!(
        names.len(),
        variants.len(),
        "one file per variant: {names:?}"
    );
    for v in &variants {
        let fresh = compile_cubin(v, ARCH).unwrap();
        let (cached, compiled) = cached_cubin_in(v, ARCH, Some(dir)).unwrap();
        assert!(!compiled, "{} was not in the cache", v.label());
        assert_eq!(cached, fresh, "{}: the cached cubin differs", v.label());
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// In a child process (see `two_processes_fill_one_cache`): fills the folder it is given.
#[test]
fn child_fills_the_cache() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        fill(Path::new(&dir));
    }
}

#[test]
fn two_processes_fill_one_cache() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = fresh_dir("cache-processes");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_fills_the_cache",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, &dir)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_threads_fill_one_cache() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = fresh_dir("cache-threads");
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| fill(&dir));
        }
    });
    check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
