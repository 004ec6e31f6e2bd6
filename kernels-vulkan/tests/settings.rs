//! The backend's settings are read once, when it is opened, and its diagnostics go through the
//! `log` facade (it read `TESSERA_VULKAN_PORTABLE` on every call and printed to stderr).
//!
//! One test in its own process, since it sets environment variables and installs a logger.

mod common;

use std::sync::Mutex;
use tessera_core::{Backend, Fp8Granularity, Fp8Quantize, ScaleRule, TensorRef};
use tessera_vulkan::ops::copy::{CopyWordsSpec, COPY_WORDS};
use tessera_vulkan::ops::PORTABLE_ENV;
use tessera_vulkan::{Buffer, MemoryLocation, VulkanBackend, PIPELINE_STATS_ENV, SPIRV_DIR_ENV};

/// Every log record, as `level: message`.
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        RECORDS
            .lock()
            .unwrap()
            .push(format!("{}: {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

/// Sets or removes a variable.
fn set_env(name: &str, value: Option<&std::path::Path>) {
    // SAFETY (std's requirement for set_var / remove_var): this test binary has a single test,
    // and the backends' threads (none) do not read the environment.
    unsafe {
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}

fn quantize(backend: &VulkanBackend) -> tessera_core::Result<()> {
    let op = Fp8Quantize {
        rows: 2,
        cols: 100,
        granularity: Fp8Granularity::PerToken1x128,
        scale_rule: ScaleRule::Float,
    };
    backend
        .fp8_quantize(&op, TensorRef::F32(&[0.25; 200]))
        .map(|_| ())
}

#[test]
fn settings_are_read_once_and_diagnostics_are_logged() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    set_env(SPIRV_DIR_ENV, None);
    set_env(PORTABLE_ENV, None);
    let Some(plain) = common::backend() else {
        return;
    };
    let shaders = tessera_vulkan::shaders::all();
    let copy = shaders.iter().find(|s| s.name == "copy_words").unwrap();

    // A folder overriding copy_words with its own (valid) SPIR-V, and the quantizer's first
    // pass with garbage.
    let dir = std::env::temp_dir().join(format!("tessera-spirv-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("copy_words.spv"), copy.spirv).unwrap();
    std::fs::write(dir.join("fp8_quantize_scales.spv"), b"not SPIR-V").unwrap();

    // Opened with both set; then the environment is cleared.
    set_env(SPIRV_DIR_ENV, Some(&dir));
    set_env(PORTABLE_ENV, Some(std::path::Path::new("1")));
    let overridden = VulkanBackend::new().unwrap();
    set_env(SPIRV_DIR_ENV, None);
    set_env(PORTABLE_ENV, None);
    assert_eq!(
        overridden.context().settings().spirv_dir.as_deref(),
        Some(dir.as_path())
    );
    assert!(overridden.context().settings().portable);
    // Portable stays forced though the variable is gone.
    assert!(!overridden.fp8_gemm_uses_cooperative_matrix());
    assert!(!overridden.attention_uses_cooperative_matrix(64, 128));

    // The override is used (the variable is gone, the setting is not) and logged.
    let ctx = overridden.context();
    let src = Buffer::new(ctx, 64, MemoryLocation::HostVisible).unwrap();
    let dst = Buffer::new(ctx, 64, MemoryLocation::HostVisible).unwrap();
    overridden
        .run_and_wait(|cmd| {
            // SAFETY: `cmd` is the backend's own recording command buffer; both buffers are
            // live storage buffers of its device, kept until the call has waited.
            unsafe { overridden.record_copy_words(cmd, src.range(), dst.range(), 64) }
        })
        .unwrap();
    let logged = RECORDS.lock().unwrap().clone();
    assert!(
        logged.iter().any(|r| r.starts_with("INFO")
            && r.contains("copy_words")
            && r.contains(SPIRV_DIR_ENV)),
        "the override was not logged: {logged:?}"
    );
    // ... and the garbage one is used too, so that the quantizer fails on this backend.
    assert!(quantize(&overridden).is_err());

    // A backend opened before the variable was set never reads it.
    set_env(SPIRV_DIR_ENV, Some(&dir));
    set_env(PORTABLE_ENV, Some(std::path::Path::new("1")));
    quantize(&plain).expect("a backend opened without the override read it later");
    assert_eq!(plain.context().settings().spirv_dir, None);
    assert!(!plain.context().settings().portable);
    set_env(SPIRV_DIR_ENV, None);
    set_env(PORTABLE_ENV, None);
    let _ = std::fs::remove_dir_all(&dir);

    // Pipeline statistics, asked for: each pipeline keeps and logs what the driver says of it
    // where the device has VK_KHR_pipeline_executable_properties, else a warning is logged.
    set_env(PIPELINE_STATS_ENV, Some(std::path::Path::new("1")));
    let with_stats = VulkanBackend::new().unwrap();
    set_env(PIPELINE_STATS_ENV, None);
    assert!(with_stats.context().settings().pipeline_statistics);
    assert!(!plain.context().settings().pipeline_statistics);
    let copy = with_stats
        .pipelines()
        .get(&COPY_WORDS, &CopyWordsSpec::default())
        .unwrap();
    let logged = RECORDS.lock().unwrap().clone();
    if with_stats.features().pipeline_statistics {
        assert!(!copy.statistics().is_empty());
        assert!(
            logged
                .iter()
                .any(|r| r.starts_with("INFO") && r.contains("pipeline statistics of copy_words")),
            "the statistics were not logged: {logged:?}"
        );
    } else {
        println!("skipped: pipeline statistics (the device has no VK_KHR_pipeline_executable_properties)");
        assert!(copy.statistics().is_empty());
        assert!(
            logged
                .iter()
                .any(|r| r.starts_with("WARN") && r.contains(PIPELINE_STATS_ENV)),
            "no warning: {logged:?}"
        );
    }
    // Not asked for: nothing kept.
    let plain_copy = plain
        .pipelines()
        .get(&COPY_WORDS, &CopyWordsSpec::default())
        .unwrap();
    assert!(plain_copy.statistics().is_empty());
}
