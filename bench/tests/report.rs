//! `tessera report` end to end: three JSON files in the bench schema (Tessera on CUDA, the peers,
//! Tessera on Vulkan) joined into `results.md`, with the ratios computed the documented way
//! (throughput ours / peer, Vulkan / CUDA), failed measurements listed, the FACTS.md check, the
//! grouped GEMM rows against the plain GEMM of the same total M, and a clear error for a missing
//! or malformed input.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn header(backend: &str, copy: f64) -> Value {
    json!({
        "tool": "test", "device": "Test GPU", "date": "2026-11-22 00:00:00 UTC",
        "commit": "abc1234", "backend": backend, "suite": "standard",
        "ceilings": {"copy_gbps": copy, "matmul_tflops": 800.0, "matmul_impl": "test matmul"},
        "notes": [format!("{backend} note")]
    })
}

fn record(op: &str, shape: &str, imp: &str, ms: Option<f64>, tflops: Option<f64>) -> Value {
    json!({
        "op": op, "shape": shape, "impl": imp, "params": {"density": 0.25, "frames": 30,
        "model": "hunyuan"}, "time_ms": ms, "tflops": tflops, "gbps": tflops.map(|t| t * 10.0),
        "pct_matmul": null, "pct_copy": null,
        "error": if ms.is_none() { json!("skipped: too slow") } else { Value::Null }
    })
}

fn write(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

#[test]
fn report_joins_cuda_peers_and_vulkan_with_ratios() {
    let dir = temp_dir("join");
    let gemm = "M4096 N7168 K16384";
    let mla = "b64 sk4096 hq128 sq1 bf16";
    let att = "hunyuan F30 T3840 h24";
    write(
        &dir.join("ours.json"),
        &json!({"header": header("cuda", 4000.0), "records": [
            record("fp8_gemm", gemm, "tessera", Some(2.0), Some(300.0)),
            record("mla_decode", mla, "tessera", Some(0.5), Some(150.0)),
            record("attention", att, "tessera radial", Some(100.0), Some(240.0)),
            record("attention", att, "tessera dense", Some(400.0), Some(240.0)),
            record("attention_backward", att, "tessera radial", Some(250.0), Some(240.0)),
        ]}),
    );
    write(
        &dir.join("peers.json"),
        &json!({"header": header("torch", 4100.0), "records": [
            record("fp8_gemm", gemm, "cublas block", Some(0.5), Some(1200.0)),
            record("fp8_gemm", gemm, "cublas block (host)", Some(0.6), Some(1000.0)),
            record("fp8_gemm", gemm, "cublas block (idle events)", Some(0.55), Some(1100.0)),
            record("mla_decode", mla, "torch", Some(1.0), Some(75.0)),
            record("attention", att, "flex radial", Some(50.0), Some(480.0)),
            record("attention", att, "cudnn dense", Some(200.0), Some(480.0)),
        ]}),
    );
    write(
        &dir.join("vulkan.json"),
        &json!({"header": header("vulkan", 4200.0), "records": [
            record("fp8_gemm", gemm, "tessera-vulkan", Some(8.0), Some(75.0)),
            record("mla_decode", mla, "tessera-vulkan", Some(2.0), Some(37.5)),
            record("attention", att, "tessera-vulkan radial", Some(400.0), Some(60.0)),
            record("attention", att, "tessera-vulkan dense", None, None),
        ]}),
    );
    let out = dir.join("out");
    let status = tessera()
        .args(["report", "--ours"])
        .arg(dir.join("ours.json"))
        .arg("--peers")
        .arg(dir.join("peers.json"))
        .arg("--vulkan")
        .arg(dir.join("vulkan.json"))
        .arg("--out")
        .arg(&out)
        .env("TESSERA_FONT", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let row = |start: &str| -> Vec<String> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {start} |")))
            .unwrap_or_else(|| panic!("no row for {start} in\n{md}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    // GEMM: ours / cublas block = 300 / 1200; Vulkan / CUDA = 2 ms / 8 ms. The host and
    // idle-event rows only appear in the FACTS section.
    let g = row(gemm);
    assert!(g.contains(&"0.25".to_string()), "{g:?}");
    assert!(g.contains(&"0.250".to_string()), "{g:?}");
    assert!(!md.contains("cublas block (host) TFLOPS"));
    // MLA: ours / torch = 1.0 / 0.5 (time ratio); Vulkan / CUDA = 0.5 / 2.0.
    let m = row(mla);
    assert!(m.contains(&"2.00".to_string()), "{m:?}");
    assert!(m.contains(&"0.250".to_string()), "{m:?}");
    // Attention: radial speedup 4.00 (dense / radial), ours / flex 0.50, ours / cudnn 0.50,
    // Vulkan radial / CUDA radial 100 / 400; the skipped Vulkan dense shows as a dash.
    let a = row(att);
    for want in ["4.00", "0.50", "0.250", "–"] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    // Backward: 250 ms, 2.50 times our radial forward on the same mask.
    assert!(md.contains("## Radial attention backward"), "{md}");
    let backward = md
        .lines()
        .filter(|l| l.starts_with(&format!("| {att} |")))
        .nth(1)
        .unwrap_or_else(|| panic!("no backward row in\n{md}"));
    assert!(backward.contains("| 2.50 |"), "{backward}");
    assert!(md.contains("Tessera on Vulkan: Test GPU"));
    assert!(md.contains("- Vulkan vulkan note"));
    // The skipped measurement is listed with its reason.
    assert!(
        md.contains("tessera-vulkan dense: skipped: too slow"),
        "{md}"
    );
    // FACTS.md's cuBLAS block figure for this shape is 1137 TFLOPS: now +5.5%, host -12.0%,
    // idle events -3.3%.
    let f = md
        .lines()
        .find(|l| l.starts_with(&format!("| fp8_gemm | {gemm} | cublas block |")))
        .unwrap();
    for want in ["+5.5%", "-12.0%", "-3.3%"] {
        assert!(f.contains(want), "{want} missing from {f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `r` with the time of its fastest launch.
fn with_min(mut r: Value, min_ms: f64) -> Value {
    r["min_ms"] = json!(min_ms);
    r
}

fn grouped(shape: &str, ms: Option<f64>, tflops: Option<f64>, plain: &str) -> Value {
    let mut r = record("fp8_gemm_grouped", shape, "tessera", ms, tflops);
    r["params"] = json!({"layout": "contiguous", "groups": 2, "rows": [256, 384],
        "total_rows": 640, "n": 4096, "k": 7168, "plain_shape": plain});
    r
}

#[test]
fn report_compares_grouped_gemm_with_the_plain_gemm_of_the_same_rows() {
    let dir = temp_dir("grouped");
    let plain = "M18432 N4096 K7168";
    let contiguous = "contiguous 8 groups M18432 N4096 K7168";
    let masked = "masked 8 groups of 4096 M18432 N4096 K7168";
    let orphan = "contiguous 2 groups M640 N1024 K1024";
    write(
        &dir.join("ours.json"),
        &json!({"header": header("cuda", 4000.0), "records": [
            record("fp8_gemm", "M64 N2112 K7168", "tessera", Some(0.1), Some(200.0)),
            with_min(record("fp8_gemm", plain, "tessera", Some(1.0), Some(1000.0)), 0.9),
            with_min(grouped(contiguous, Some(1.05), Some(950.0), plain), 1.0),
            grouped(masked, None, None, plain),
            grouped(orphan, Some(0.01), Some(100.0), "M640 N1024 K1024"),
        ]}),
    );
    let out = dir.join("out");
    let status = tessera()
        .args(["report", "--ours"])
        .arg(dir.join("ours.json"))
        .arg("--out")
        .arg(&out)
        .env("TESSERA_FONT", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let gemm_at = md.find("## FP8 GEMM").expect("FP8 GEMM section");
    let grouped_at = md
        .find("## Grouped FP8 GEMM (mixture of experts)")
        .unwrap_or_else(|| panic!("no grouped section in\n{md}"));
    assert!(gemm_at < grouped_at, "{md}");
    let row = |start: &str| -> Vec<String> {
        md[grouped_at..]
            .lines()
            .find(|l| l.starts_with(&format!("| {start} |")))
            .unwrap_or_else(|| panic!("no row for {start} in\n{md}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    // | shape | rows per group | ms | TFLOPS | plain shape | plain TFLOPS | grouped / plain |
    //   grouped / plain (min) |: the fastest launches 0.9 ms (plain) and 1.0 ms (grouped).
    assert_eq!(
        row(contiguous)[1..9],
        [contiguous, "256, 384", "1.050", "950", plain, "1000", "0.95", "0.90"]
    );
    // Failed: no time, no ratio (and listed with the failures).
    assert_eq!(
        row(masked)[3..9],
        ["–", "–", plain, "1000", "–", "–"],
        "{md}"
    );
    assert!(md.contains(&format!(
        "- fp8_gemm_grouped {masked} tessera: skipped: too slow"
    )));
    // The plain twin is not in the file: dashes.
    assert_eq!(row(orphan)[5..8], ["M640 N1024 K1024", "–", "–"]);
    // The grouped rows stay out of the plain FP8 GEMM table.
    assert!(!md[gemm_at..grouped_at].contains(contiguous));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_names_a_missing_or_malformed_input() {
    let dir = temp_dir("errors");
    let missing = dir.join("missing.json");
    let out = tessera()
        .args(["report", "--ours"])
        .arg(&missing)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.json"), "{err}");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"header\": 3}").unwrap();
    let out = tessera()
        .args(["report", "--ours"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_shows_the_quantizers_against_the_copy_ceiling() {
    let dir = temp_dir("quantize");
    let shape = "4096x7168 bf16 1x128";
    let mut ours = record("fp8_quantize", shape, "tessera", Some(0.025), None);
    ours["gbps"] = json!(3400.0);
    ours["params"] = json!({"copy_same_bytes_ms": 0.02});
    let mut vk = record("fp8_quantize", shape, "tessera-vulkan", Some(0.05), None);
    vk["gbps"] = json!(1700.0);
    write(
        &dir.join("ours.json"),
        &json!({"header": header("cuda", 4000.0), "records": [ours]}),
    );
    write(
        &dir.join("vk.json"),
        &json!({"header": header("vulkan", 4000.0), "records": [vk]}),
    );
    let out = dir.join("out");
    let status = tessera()
        .args(["report", "--ours"])
        .arg(dir.join("ours.json"))
        .arg("--vulkan")
        .arg(dir.join("vk.json"))
        .arg("--out")
        .arg(&out)
        .env("TESSERA_FONT", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let at = md
        .find("## FP8 quantizers")
        .unwrap_or_else(|| panic!("no quantizer section in\n{md}"));
    let row: Vec<String> = md[at..]
        .lines()
        .find(|l| l.starts_with(&format!("| {shape} |")))
        .unwrap_or_else(|| panic!("no row in\n{md}"))
        .split('|')
        .map(|c| c.trim().to_string())
        .collect();
    // | shape | ms | GB/s | % copy | same-size copy ms | % same-size copy | Vulkan ms |
    //   Vulkan GB/s | Vulkan / CUDA |
    assert_eq!(
        row[1..10],
        [shape, "0.0250", "3400", "85.0", "0.0200", "80.0", "0.0500", "1700", "0.500"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_compares_forward_plus_backward_with_the_peers() {
    let dir = temp_dir("fwd-bwd");
    let big = "hunyuan F120 T3840 h24";
    let small = "wan F18 T3840 h40";
    write(
        &dir.join("ours.json"),
        &json!({"header": header("cuda", 4000.0), "records": [
            record("attention", big, "tessera radial", Some(400.0), Some(240.0)),
            record("attention", big, "tessera dense", Some(4000.0), Some(240.0)),
            record("attention_backward", big, "tessera radial", Some(1000.0), Some(240.0)),
            record("attention_backward", big, "tessera radial deterministic", Some(1250.0), Some(192.0)),
            record("attention", small, "tessera radial", Some(50.0), Some(240.0)),
            record("attention_backward", small, "tessera radial", None, None),
        ]}),
    );
    write(
        &dir.join("peers.json"),
        &json!({"header": header("torch", 4100.0), "records": [
            record("attention", big, "flex radial", Some(300.0), Some(480.0)),
            record("attention", big, "cudnn dense", Some(2000.0), Some(480.0)),
            record("attention_backward", big, "cudnn dense", Some(5000.0), Some(480.0)),
            record("attention_backward", big, "flex radial", Some(1100.0), Some(480.0)),
            record("attention", small, "cudnn dense", Some(150.0), Some(480.0)),
            record("attention_backward", small, "cudnn dense", Some(400.0), Some(480.0)),
        ]}),
    );
    let out = dir.join("out");
    let status = tessera()
        .args(["report", "--ours"])
        .arg(dir.join("ours.json"))
        .arg("--peers")
        .arg(dir.join("peers.json"))
        .arg("--out")
        .arg(&out)
        .env("TESSERA_FONT", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let backward_at = md
        .find("## Radial attention backward")
        .unwrap_or_else(|| panic!("no backward section in\n{md}"));
    let both_at = md
        .find("### Forward + backward")
        .unwrap_or_else(|| panic!("no fwd+bwd table in\n{md}"));
    assert!(backward_at < both_at, "{md}");
    assert!(
        md[both_at..].contains("ours / cudnn dense >= 4 at hunyuan F120 T3840 h24"),
        "{md}"
    );
    let row = |from: usize, start: &str| -> Vec<String> {
        md[from..]
            .lines()
            .find(|l| l.starts_with(&format!("| {start} |")))
            .unwrap_or_else(|| panic!("no row for {start} in\n{md}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    // The peers in first-seen order: cudnn dense, then flex radial.
    // | shape | ours ms | TFLOPS | bwd / fwd | deterministic ms | cudnn ms | ours / cudnn |
    // ours det. / cudnn | flex ms | ours / flex | ours det. / flex |
    assert_eq!(
        row(backward_at, big)[1..12],
        [
            big, "1000.0", "240", "2.50", "1250.0", "5000.0", "5.00", "4.00", "1100.0", "1.10",
            "0.88"
        ]
    );
    // | shape | ours fwd+bwd | cudnn fwd+bwd | ours / cudnn | flex fwd+bwd | ours / flex |:
    // 400 + 1000 against 2000 + 5000 (5.00) and 300 + 1100 (1.00).
    assert_eq!(
        row(both_at, big)[1..7],
        [big, "1400.0", "7000.0", "5.00", "1400.0", "1.00"]
    );
    // Our failed backward: no sum, no ratio; the peer's sum is still shown.
    assert_eq!(
        row(both_at, small)[1..7],
        [small, "–", "550.0", "–", "–", "–"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
