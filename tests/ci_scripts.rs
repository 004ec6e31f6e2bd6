//! The CI scripts do what they promise:
//! - `ci/run-tests.sh` (what `ci/test.sh` runs the tests with) fails exactly when the test
//!   command fails, whatever its log says (`ci/test.sh` used `|| true` and scraped the log: a
//!   command that printed `test result: ok` and then died passed);
//! - the GPU machine's run requires Vulkan as it requires CUDA (a Vulkan device that failed to
//!   open made the suites print `skipped` and pass), and a required backend that does not open
//!   fails the suites;
//! - the GPU pack leaves out the SPIR-V test (it checks the checkout's shader sources, and failed
//!   on the GPU machine), and the sanitizer step runs the four tools with an error exit code.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> String {
    std::fs::read_to_string(repo().join("ci").join(name)).unwrap()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tessera-ci-{name}-{}", std::process::id()))
}

/// Runs `ci/run-tests.sh` on a fake test command (a shell snippet).
fn run_tests(name: &str, snippet: &str) -> Output {
    Command::new("bash")
        .arg(repo().join("ci/run-tests.sh"))
        .arg(temp(name))
        .args(["sh", "-c", snippet])
        .output()
        .unwrap()
}

#[test]
fn run_tests_follows_the_exit_status() {
    // A run whose log looks fine but whose command fails (a test binary killed after printing its
    // results, a build step failing later): the old scraping passed it.
    let out = run_tests(
        "died",
        "echo 'running 3 tests'; echo 'test result: ok. 3 passed; 0 failed'; exit 101",
    );
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("exited with status 101"), "{stdout}");

    // A passing run: the outline and the summary (passed tests summed, `skipped:` lines counted).
    let out = run_tests(
        "ok",
        "echo 'test result: ok. 3 passed; 0 failed'; echo 'skipped: no device'; \
         echo 'test result: ok. 4 passed; 0 failed'; echo noise",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tests: 7 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("backend suites skipped (no device): 1"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("noise"),
        "only the outline is shown: {stdout}"
    );

    // A passing run with no `skipped:` line (grep -c finds none: still a success).
    let out = run_tests("none", "echo 'test result: ok. 1 passed; 0 failed'");
    assert!(out.status.success(), "{out:?}");
    for name in ["died", "ok", "none"] {
        let _ = std::fs::remove_file(temp(name));
    }
    // ci/test.sh runs the tests through it, under pipefail, without `|| true`.
    let test_sh = script("test.sh");
    assert!(test_sh.contains("set -euo pipefail"));
    let line = test_sh
        .lines()
        .find(|l| l.contains("cargo test --workspace"))
        .unwrap();
    assert!(line.starts_with("ci/run-tests.sh"), "{line}");
    assert!(!line.contains("|| true"), "{line}");
}

#[test]
fn the_gpu_run_requires_vulkan_and_cuda() {
    let run = script("gpu-run.sh");
    let before_runs = &run[..run.find("run info").unwrap()];
    for required in [
        "export TESSERA_REQUIRE_BACKENDS=cuda,vulkan",
        "export TESSERA_REQUIRE_VULKAN=1",
        "export TESSERA_REQUIRE_CUDA=1",
    ] {
        assert!(
            before_runs.contains(required),
            "gpu-run.sh lacks `{required}`"
        );
    }
    // Every suite that runs Vulkan runs under those settings (no `env -u` or override).
    assert!(
        !run.contains("env -u TESSERA_REQUIRE"),
        "a run drops the requirement"
    );
    assert!(
        run.contains("for suite in conformance determinism fuzz_backends"),
        "the suites do not all run on both backends"
    );
    let pack = script("gpu-pack.sh");
    assert!(
        pack.contains("vk:spirv) ;;"),
        "the SPIR-V test is packed for the GPU machine"
    );
    assert!(
        pack.contains("cu:*) cp"),
        "the CUDA crate's tests are not packed"
    );
}

/// In a child process (see below): opens Vulkan through the suites' helper.
#[test]
fn child_opens_vulkan() {
    if std::env::var_os("TESSERA_TEST_CHILD").is_some() {
        let _ = common::open_or_skip(tessera::BackendKind::Vulkan);
    }
}

#[test]
fn a_required_vulkan_that_does_not_open_fails() {
    let child = |require: bool| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_opens_vulkan", "--nocapture"])
            .env("TESSERA_TEST_CHILD", "1")
            // No driver: the loader finds no ICD.
            .env("VK_ICD_FILENAMES", "/nonexistent/tessera-icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/tessera-icd.json")
            .env_remove("TESSERA_REQUIRE_BACKENDS");
        if require {
            cmd.env("TESSERA_REQUIRE_VULKAN", "1");
        } else {
            cmd.env_remove("TESSERA_REQUIRE_VULKAN");
        }
        cmd.output().unwrap()
    };
    let relaxed = child(false);
    assert!(relaxed.status.success(), "{relaxed:?}");
    assert!(String::from_utf8_lossy(&relaxed.stdout).contains("skipped: "));
    let required = child(true);
    assert!(
        !required.status.success(),
        "TESSERA_REQUIRE_VULKAN=1 and no Vulkan device, yet the suite passed: {required:?}"
    );
}

#[test]
fn the_sanitizer_step_runs_the_four_tools() {
    let sanitize = script("gpu-sanitize.sh");
    for tool in ["memcheck", "racecheck", "synccheck", "initcheck"] {
        assert!(
            sanitize.contains(tool),
            "gpu-sanitize.sh does not run {tool}"
        );
    }
    assert!(sanitize.contains("--error-exitcode 1"));
    assert!(script("gpu-run.sh").contains("gpu-sanitize.sh"));
    // Without compute-sanitizer it fails and says so (it never reports zero findings unchecked).
    let out_dir = temp("sanitizer");
    let out = Command::new("bash")
        .arg(repo().join("ci/gpu-sanitize.sh"))
        .arg(&out_dir)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).unwrap_or_default();
    if Path::new("/usr/local/cuda/bin/compute-sanitizer").exists() {
        println!("compute-sanitizer is installed here: the missing-tool case is not checked");
    } else {
        assert!(!out.status.success(), "{out:?}");
        assert!(summary.contains("compute-sanitizer not found"), "{summary}");
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

/// Every CUDA test opens its backend through `kernels-cuda/tests/common` (`backend()`), which
/// fails where CUDA is required (the GPU machine) instead of printing `skipped` and passing:
/// plan_candidates and the two timing tests opened it themselves until session 8.
#[test]
fn the_cuda_tests_fail_without_a_required_device() {
    let dir = repo().join("kernels-cuda/tests");
    let mut own = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("CudaBackend::new()") || text.contains("CudaBackend::with_ordinal(") {
                own.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        own.is_empty(),
        "these CUDA tests open the backend themselves, not through common::backend(): {own:?}"
    );
}

/// Writes an executable shell script.
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// racecheck runs each test of a binary in its own process (one test's host memory cannot end
/// the others' checks: session 8), the other tools one process per binary; the tests see
/// `TESSERA_SANITIZER_SMALL=1`. Checked with a stand-in compute-sanitizer and test binaries.
#[test]
fn racecheck_runs_one_test_per_process() {
    let root = temp("sanitizer-split");
    let (pack, tools, out_dir) = (root.join("pack"), root.join("tools"), root.join("out"));
    for dir in [pack.join("bin"), tools.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for name in ["gpu-sanitize.sh", "gpu-unpack.sh"] {
        std::fs::copy(repo().join("ci").join(name), pack.join(name)).unwrap();
    }
    // The stand-in runs the command after its own options and reports no error.
    write_script(
        &tools.join("compute-sanitizer"),
        "[ \"$1\" = --version ] && exit 0\nwhile [ \"$1\" != --error-exitcode ]; do shift; done; shift 2\n\
         \"$@\"; echo \"========= ERROR SUMMARY: 0 errors\"",
    );
    // A libtest-like binary: `--list` names two tests; a run prints its arguments.
    let fake_test = "if [ \"${*: -1}\" = --list ]; then printf 'alpha: test\\nbeta: test\\n\\n2 tests\\n'; exit 0; fi\n\
         echo \"args: $* small=$TESSERA_SANITIZER_SMALL\"; echo 'test result: ok.'";
    write_script(&pack.join("bin/cutest-fake"), fake_test);
    write_script(&pack.join("bin/test-conformance"), fake_test);
    let out = Command::new("bash")
        .arg(pack.join("gpu-sanitize.sh"))
        .arg(&out_dir)
        .env("PATH", format!("{}:/usr/bin:/bin", tools.display()))
        .env("TESSERA_SANITIZER_TOOLS", "memcheck racecheck")
        .output()
        .unwrap();
    let runs = std::fs::read_to_string(out_dir.join("runs.txt")).unwrap_or_default();
    assert!(out.status.success(), "{out:?}\n{runs}");
    let lines: Vec<&str> = runs.lines().collect();
    let count = |tool: &str, name: &str| {
        lines
            .iter()
            .filter(|l| l.split_whitespace().take(2).eq([tool, name]))
            .count()
    };
    for name in ["cutest-fake", "conformance_cuda"] {
        assert_eq!(count("memcheck", name), 1, "{runs}");
        assert_eq!(count("racecheck", name), 0, "{runs}");
        for test in ["alpha", "beta"] {
            assert_eq!(count("racecheck", &format!("{name}--{test}")), 1, "{runs}");
        }
    }
    let log = std::fs::read_to_string(out_dir.join("racecheck-cutest-fake--beta.log")).unwrap();
    assert!(
        log.contains("--exact beta") && log.contains("small=1"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn the_candle_cuda_path_is_built_for_the_gpu_machine_only() {
    // CI builds and tests the default (CPU) features only: no nvcc there.
    let test_sh = script("test.sh");
    assert!(
        !test_sh.contains("tessera-candle --features cuda") && !test_sh.contains("cuda-toolkit.sh"),
        "ci/test.sh builds candle's CUDA feature"
    );
    let toml = std::fs::read_to_string(repo().join("candle/Cargo.toml")).unwrap();
    assert!(toml.contains("required-features = [\"cuda\"]"));
    assert!(!toml.contains("default = [\"cuda\"]"));
    // The pack builds it with the toolkit from PyPI (CUDA 13.0, the GPU machine's, for sm_90),
    // and the GPU run's full mode runs its tests and example.
    let pack = script("gpu-pack.sh");
    assert!(pack.contains("source ci/cuda-toolkit.sh"));
    assert!(pack.contains("-p tessera-candle --features cuda --test cuda"));
    assert!(pack.contains("--example candle_layers"));
    assert!(pack.contains("candle-cuda.tar.xz"));
    assert!(script("gpu-run.sh").contains("candle-cuda.tar.xz"));
    let toolkit = script("cuda-toolkit.sh");
    assert!(toolkit.contains("cuda_toolkit_version=13.0."));
    assert!(toolkit.contains("export CUDA_COMPUTE_CAP=90"));
    assert!(toolkit.contains("$HOME/.cache/tessera/"));
    let run = script("gpu-run.sh");
    assert!(run.contains("run candle_cuda"));
    assert!(run.contains("run candle_layers"));
}

#[test]
fn the_benchmark_times_tessera_beside_the_peers() {
    let bench = script("gpu-bench.sh");
    // The wheel goes on PYTHONPATH (a venv made from the machine's python3 does not see torch).
    assert!(bench.contains("pip install -q --no-index --no-deps --target"));
    assert!(bench.contains("wheels/tessera-*.whl"));
    assert!(!bench.contains("-m venv"));
    // A skipped tessera (python) row fails the script.
    assert!(bench.contains("grep -q \"^skipped:\" \"$out/peers.log\""));
    assert!(bench.contains("exit 1"));
    let peers = script("peers.py");
    assert!(peers.contains("TESSERA_PY = \"tessera (python)\""));
    assert!(script("gpu-pack.sh").contains("python3 -m pip wheel"));
}
