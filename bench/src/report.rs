//! `tessera report`: joins Tessera's bench JSON with the peers' (ci/peers.py, same schema) into
//! one Markdown table per op with ratios (ours / peer, in throughput: above 1 Tessera is faster),
//! a check of the peers against FACTS.md §5, and PNG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::plot::{line_plot, Series};
use crate::schema::{BenchFile, Record};

/// Arguments of `tessera report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Tessera's JSON (`tessera bench --json`).
    #[arg(long, value_name = "FILE")]
    pub ours: PathBuf,
    /// The peers' JSON (`ci/peers.py --json`).
    #[arg(long, value_name = "FILE")]
    pub peers: Option<PathBuf>,
    /// Tessera's Vulkan JSON (`tessera bench --backend vulkan --json`), joined as extra columns
    /// beside the CUDA numbers of `--ours`.
    #[arg(long, value_name = "FILE")]
    pub vulkan: Option<PathBuf>,
    /// Folder for `results.md` and the PNG plots.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `tessera report`.
pub fn run(args: &ReportArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let ours = BenchFile::load(&args.ours)?;
    let peers = match &args.peers {
        Some(p) => Some(BenchFile::load(p)?),
        None => None,
    };
    let vulkan = match &args.vulkan {
        Some(p) => Some(BenchFile::load(p)?),
        None => None,
    };
    write(&ours, peers.as_ref(), vulkan.as_ref(), &args.out)?;
    Ok(ExitCode::SUCCESS)
}

/// FACTS.md §5: (M, N, K, cuBLAS tensorwise, cuBLAS block) TFLOPS on this H200.
const FACTS_GEMM: [(usize, usize, usize, f64, Option<f64>); 10] = [
    (64, 7168, 16384, 246.0, Some(148.0)),
    (64, 24576, 1536, 122.0, Some(64.0)),
    (128, 7168, 16384, 457.0, Some(297.0)),
    (128, 4096, 7168, 169.0, Some(103.0)),
    (4096, 2112, 7168, 910.0, None),
    (4096, 24576, 1536, 1072.0, Some(870.0)),
    (4096, 32768, 512, 721.0, Some(565.0)),
    (4096, 7168, 16384, 1273.0, Some(1137.0)),
    (4096, 4096, 7168, 1152.0, Some(911.0)),
    (4096, 7168, 2048, 954.0, Some(715.0)),
];

/// FACTS.md §5 attention: (shape key, cuDNN dense ms, FlexAttention radial ms).
const FACTS_ATTENTION: [(&str, f64, f64); 2] = [
    ("hunyuan F30 T3840 h24", 264.4, 106.4),
    ("wan F18 T3840 h40", 158.1, 71.2),
];

fn f(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// Time in ms with sensible digits.
fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 100.0 => format!("{v:.1}"),
        Some(v) if v >= 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
        None => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Shapes of `op` in first-seen order (ours first, then any only the peers have).
fn shapes(op: &str, files: &[&BenchFile]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for file in files {
        for r in file.records.iter().filter(|r| r.op == op) {
            if !v.contains(&r.shape) {
                v.push(r.shape.clone());
            }
        }
    }
    v
}

/// Implementations of `op` in `file`, first-seen order.
fn impls(op: &str, file: Option<&BenchFile>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in file
        .map(|f| f.records.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| r.op == op)
    {
        if !v.contains(&r.implementation) {
            v.push(r.implementation.clone());
        }
    }
    v
}

fn find<'a>(
    file: Option<&'a BenchFile>,
    op: &str,
    shape: &str,
    implementation: &str,
) -> Option<&'a Record> {
    file.and_then(|f| f.find(op, shape, implementation))
}

fn tflops(r: Option<&Record>) -> Option<f64> {
    r.and_then(|r| r.tflops)
}

fn gbps(r: Option<&Record>) -> Option<f64> {
    r.and_then(|r| r.gbps)
}

fn time(r: Option<&Record>) -> Option<f64> {
    r.and_then(|r| r.time_ms)
}

/// The time of a record's fastest launch.
fn min_time(r: Option<&Record>) -> Option<f64> {
    r.and_then(|r| r.min_ms)
}

/// The implementation name of Tessera's Vulkan records (`tessera bench --backend vulkan`).
const VK: &str = "tessera-vulkan";

/// Writes `results.md` and the plots into `dir`: Tessera (`ours`, CUDA) against the peers, with
/// Tessera's Vulkan numbers (`vulkan`) as extra columns where given.
pub fn write(
    ours: &BenchFile,
    peers: Option<&BenchFile>,
    vulkan: Option<&BenchFile>,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::new();
    let h = &ours.header;
    writeln!(md, "# Tessera benchmarks\n")?;
    writeln!(
        md,
        "Device: **{}**. Tessera: backend {}, commit `{}`, {} (suite {}).",
        h.device, h.backend, h.commit, h.date, h.suite
    )?;
    writeln!(
        md,
        "Ceilings measured in the same run: copy **{} GB/s** (device-to-device, read + write), \
         dense matmul **{} TFLOPS** ({}).",
        f(h.ceilings.copy_gbps, 0),
        f(h.ceilings.matmul_tflops, 0),
        h.ceilings.matmul_impl
    )?;
    if let Some(p) = peers {
        let ph = &p.header;
        writeln!(
            md,
            "\nPeers: {} on {}, {}; their ceilings: copy {} GB/s, matmul {} TFLOPS ({}).",
            ph.backend,
            ph.device,
            ph.date,
            f(ph.ceilings.copy_gbps, 0),
            f(ph.ceilings.matmul_tflops, 0),
            ph.ceilings.matmul_impl
        )?;
    }
    if let Some(v) = vulkan {
        let vh = &v.header;
        writeln!(
            md,
            "\nTessera on Vulkan: {}, commit `{}`, {}; copy ceiling (Vulkan) {} GB/s. The \
             `Vulkan / CUDA` columns compare Tessera's two backends on the same GPU (above 1 \
             Vulkan is faster).",
            vh.device,
            vh.commit,
            vh.date,
            f(vh.ceilings.copy_gbps, 0)
        )?;
    }
    writeln!(
        md,
        "\nRatios are ours / peer in throughput (= peer time / our time): **above 1 Tessera is \
         faster, below 1 it is behind**. `–`: not measured or failed (errors listed at the end)."
    )?;
    writeln!(md, "\nHow the numbers were taken:\n")?;
    for n in h
        .notes
        .iter()
        .chain(peers.map(|p| p.header.notes.iter()).into_iter().flatten())
    {
        writeln!(md, "- {n}")?;
    }
    for n in vulkan.map(|v| v.header.notes.iter()).into_iter().flatten() {
        writeln!(md, "- Vulkan {n}")?;
    }

    gemm_section(&mut md, ours, peers, vulkan, dir)?;
    grouped_gemm_section(&mut md, ours)?;
    quantize_section(&mut md, ours, vulkan)?;
    mla_section(&mut md, ours, peers, vulkan, dir)?;
    attention_section(&mut md, ours, peers, vulkan, dir)?;
    attention_backward_section(&mut md, ours, peers)?;
    facts_section(&mut md, peers)?;

    let errors: Vec<&Record> = ours
        .records
        .iter()
        .chain(peers.map(|p| p.records.iter()).into_iter().flatten())
        .chain(vulkan.map(|v| v.records.iter()).into_iter().flatten())
        .filter(|r| r.error.is_some())
        .collect();
    if !errors.is_empty() {
        writeln!(md, "\n## Failed measurements\n")?;
        for r in errors {
            let e = r.error.as_deref().unwrap_or_default().replace('\n', " ");
            let e: String = e.chars().take(300).collect();
            writeln!(md, "- {} {} {}: {}", r.op, r.shape, r.implementation, e)?;
        }
    }
    let path = dir.join("results.md");
    std::fs::write(&path, md)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn plot_or_warn(result: Result<(), String>) {
    if let Err(e) = result {
        eprintln!("warning: {e}");
    }
}

fn gemm_section(
    md: &mut String,
    ours: &BenchFile,
    peers: Option<&BenchFile>,
    vulkan: Option<&BenchFile>,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    const OP: &str = "fp8_gemm";
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    // The host-timed and idle-event peer rows only explain the comparison with FACTS.md.
    let peer_impls: Vec<String> = impls(OP, peers)
        .into_iter()
        .filter(|p| !p.ends_with("(host)") && !p.ends_with("(idle events)"))
        .collect();
    writeln!(
        md,
        "\n## FP8 GEMM (block-scaled 1x128 / 128x128, bf16 out)\n"
    )?;
    write!(md, "| shape | Tessera ms | Tessera TFLOPS | % matmul |")?;
    for p in &peer_impls {
        write!(md, " {p} TFLOPS |")?;
    }
    for p in &peer_impls {
        write!(md, " ours / {p} |")?;
    }
    if vulkan.is_some() {
        write!(md, " Vulkan ms | Vulkan TFLOPS | Vulkan / CUDA |")?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "|---|---|---|---|{}",
        "---|".repeat(2 * peer_impls.len() + 3 * usize::from(vulkan.is_some()))
    )?;
    let mut series = vec![Series {
        name: "tessera".into(),
        points: vec![],
    }];
    series.extend(peer_impls.iter().map(|p| Series {
        name: p.clone(),
        points: vec![],
    }));
    let vk_series = series.len();
    if vulkan.is_some() {
        series.push(Series {
            name: VK.into(),
            points: vec![],
        });
    }
    for (i, s) in shapes.iter().enumerate() {
        let r = ours.find(OP, s, "tessera");
        write!(
            md,
            "| {s} | {} | {} | {} |",
            ms(time(r)),
            f(tflops(r), 0),
            f(r.and_then(|r| r.pct_matmul), 0)
        )?;
        if let Some(t) = tflops(r) {
            series[0].points.push((i as f64, t));
        }
        for (j, p) in peer_impls.iter().enumerate() {
            let pr = find(peers, OP, s, p);
            write!(md, " {} |", f(tflops(pr), 0))?;
            if let Some(t) = tflops(pr) {
                series[j + 1].points.push((i as f64, t));
            }
        }
        for p in &peer_impls {
            write!(
                md,
                " {} |",
                f(ratio(tflops(r), tflops(find(peers, OP, s, p))), 2)
            )?;
        }
        if vulkan.is_some() {
            let vr = find(vulkan, OP, s, VK);
            write!(
                md,
                " {} | {} | {} |",
                ms(time(vr)),
                f(tflops(vr), 1),
                f(ratio(time(r), time(vr)), 3)
            )?;
            if let Some(t) = tflops(vr) {
                series[vk_series].points.push((i as f64, t));
            }
        }
        writeln!(md)?;
    }
    plot_or_warn(line_plot(
        &dir.join("fp8_gemm.png"),
        "FP8 GEMM: TFLOPS per shape",
        "shape",
        "TFLOPS",
        &shapes,
        &series,
        false,
    ));
    writeln!(md, "\n![FP8 GEMM TFLOPS](fp8_gemm.png)")?;
    Ok(())
}

/// The target for grouped GEMM: its TFLOPS over the plain GEMM's at the same total M.
const GROUPED_TARGET: f64 = 0.95;

/// Grouped FP8 GEMM rows of `ours`, each against the plain GEMM of the same total rows in the
/// same file (its key in the record's `plain_shape` param).
/// The target of the quantizers: this fraction of the copy ceiling (issue 9).
const QUANTIZE_TARGET: f64 = 0.8;

fn quantize_section(
    md: &mut String,
    ours: &BenchFile,
    vulkan: Option<&BenchFile>,
) -> std::fmt::Result {
    const OP: &str = crate::cases::QUANTIZE_OP;
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    let copy = ours.header.ceilings.copy_gbps;
    writeln!(
        md,
        "
## FP8 quantizers (bf16 in, E4M3 and f32 scales out)
"
    )?;
    writeln!(
        md,
        "Memory-bound: GB/s count the bf16 read, the E4M3 written and the scales; `% copy` is of \
         the copy ceiling of this run (a 1 GiB copy; target >= {:.0}%); `% same-size copy` is the \
         time of a device-to-device copy moving as many bytes in all, timed the same way, over \
         the quantizer's time (the ceiling at this size, where fixed launch costs count).
",
        QUANTIZE_TARGET * 100.0
    )?;
    writeln!(
        md,
        "| shape | Tessera ms | GB/s | % copy | same-size copy ms | % same-size copy | Vulkan ms | \
         Vulkan GB/s | Vulkan / CUDA |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for s in &shapes {
        let r = ours.find(OP, s, "tessera");
        let v = vulkan.and_then(|v| v.find(OP, s, "tessera-vulkan"));
        let pct = gbps(r).zip(copy).map(|(g, c)| 100.0 * g / c);
        let copy_ms = r
            .and_then(|r| r.params.get(crate::cases::QUANTIZE_COPY_MS_PARAM))
            .and_then(|v| v.as_f64());
        let pct_same = copy_ms.zip(time(r)).map(|(c, t)| 100.0 * c / t);
        writeln!(
            md,
            "| {s} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(time(r)),
            f(gbps(r), 0),
            // One decimal: the target is a threshold, and 79.6 must not read as 80.
            f(pct, 1),
            ms(copy_ms),
            f(pct_same, 1),
            ms(time(v)),
            f(gbps(v), 0),
            f(ratio(gbps(v), gbps(r)), 3)
        )?;
    }
    Ok(())
}

fn grouped_gemm_section(md: &mut String, ours: &BenchFile) -> std::fmt::Result {
    const OP: &str = crate::cases::GROUPED_GEMM_OP;
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n## Grouped FP8 GEMM (mixture of experts)\n")?;
    writeln!(
        md,
        "Each group's rows against its own B (`contiguous`: rows stacked, offsets multiples of \
         128; `masked`: a buffer per group with room for the rows given, device-side counts). \
         TFLOPS count the rows computed; `plain` is the FP8 GEMM row of this file with the same \
         total M, N and K; target grouped / plain >= {GROUPED_TARGET}. `(min)`: the same ratio \
         on the fastest launch of each, where the median of one of the two rows is taken from a \
         wide spread.\n"
    )?;
    writeln!(
        md,
        "| shape | rows per group | Tessera ms | TFLOPS | plain shape | plain TFLOPS | grouped / plain | grouped / plain (min) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for s in &shapes {
        let r = ours.find(OP, s, "tessera");
        let param = |name: &str| r.and_then(|r| r.params.get(name));
        let rows = param("rows")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "–".into());
        let plain_shape = param("plain_shape").and_then(|v| v.as_str());
        let plain = plain_shape.and_then(|p| ours.find("fp8_gemm", p, "tessera"));
        writeln!(
            md,
            "| {s} | {rows} | {} | {} | {} | {} | {} | {} |",
            ms(time(r)),
            f(tflops(r), 0),
            plain_shape.unwrap_or("–"),
            f(tflops(plain), 0),
            f(ratio(tflops(r), tflops(plain)), 2),
            // Same FLOP in both rows: the ratio of throughputs is the inverse ratio of times.
            f(ratio(min_time(plain), min_time(r)), 2)
        )?;
    }
    Ok(())
}

fn mla_section(
    md: &mut String,
    ours: &BenchFile,
    peers: Option<&BenchFile>,
    vulkan: Option<&BenchFile>,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    const OP: &str = "mla_decode";
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    let peer_impls = impls(OP, peers);
    writeln!(
        md,
        "\n## MLA decode (absorbed, d_k 576, d_v 512, paged cache of 64-token pages)\n"
    )?;
    writeln!(
        md,
        "Peers run on a bf16 cache only; each is compared with our bf16 row of the same shape \
         and with our FP8 row (which reads 656 instead of 1152 bytes per token).\n"
    )?;
    write!(
        md,
        "| shape | Tessera ms | GB/s | % copy | TFLOPS | % matmul |"
    )?;
    for p in &peer_impls {
        write!(md, " {p} ms | {p} GB/s | ours / {p} |")?;
    }
    if vulkan.is_some() {
        write!(md, " Vulkan ms | Vulkan GB/s | Vulkan / CUDA |")?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "|---|---|---|---|---|---|{}",
        "---|".repeat(3 * peer_impls.len() + 3 * usize::from(vulkan.is_some()))
    )?;
    let mut series: Vec<Series> = ["tessera bf16", "tessera fp8"]
        .iter()
        .map(|n| Series {
            name: n.to_string(),
            points: vec![],
        })
        .collect();
    series.extend(peer_impls.iter().map(|p| Series {
        name: format!("{p} (bf16)"),
        points: vec![],
    }));
    let vk_series = series.len();
    if vulkan.is_some() {
        series.extend(["bf16", "fp8"].iter().map(|c| Series {
            name: format!("{VK} {c}"),
            points: vec![],
        }));
    }
    // Plot positions: the bf16 shapes, each fp8 shape drawn at its bf16 twin.
    let bf16_shapes: Vec<String> = shapes
        .iter()
        .filter(|s| s.ends_with("bf16"))
        .cloned()
        .collect();
    let labels: Vec<String> = bf16_shapes
        .iter()
        .map(|s| s.trim_end_matches(" bf16").to_string())
        .collect();
    for s in &shapes {
        let r = ours.find(OP, s, "tessera");
        let twin = s.replace(" fp8", " bf16");
        write!(
            md,
            "| {s} | {} | {} | {} | {} | {} |",
            ms(time(r)),
            f(gbps(r), 0),
            f(r.and_then(|r| r.pct_copy), 0),
            f(tflops(r), 1),
            f(r.and_then(|r| r.pct_matmul), 0)
        )?;
        for p in &peer_impls {
            let pr = find(peers, OP, &twin, p);
            write!(
                md,
                " {} | {} | {} |",
                ms(time(pr)),
                f(gbps(pr), 0),
                f(ratio(time(pr), time(r)), 2)
            )?;
        }
        let vr = find(vulkan, OP, s, VK);
        if vulkan.is_some() {
            write!(
                md,
                " {} | {} | {} |",
                ms(time(vr)),
                f(gbps(vr), 0),
                f(ratio(time(r), time(vr)), 3)
            )?;
        }
        writeln!(md)?;
        if let Some(x) = bf16_shapes.iter().position(|b| *b == twin) {
            let idx = if s.ends_with("fp8") { 1 } else { 0 };
            if let (true, Some(g)) = (vulkan.is_some(), gbps(vr)) {
                series[vk_series + idx].points.push((x as f64, g));
            }
            if let Some(g) = gbps(r) {
                series[idx].points.push((x as f64, g));
            }
            if idx == 0 {
                for (j, p) in peer_impls.iter().enumerate() {
                    if let Some(g) = gbps(find(peers, OP, s, p)) {
                        series[2 + j].points.push((x as f64, g));
                    }
                }
            }
        }
    }
    writeln!(
        md,
        "\n(ratio for MLA = peer time / our time, so the FP8 rows count the bytes saved.)"
    )?;
    plot_or_warn(line_plot(
        &dir.join("mla_decode.png"),
        "MLA decode: GB/s (cache bytes read) per shape",
        "shape",
        "GB/s",
        &labels,
        &series,
        false,
    ));
    writeln!(md, "\n![MLA decode GB/s](mla_decode.png)")?;
    Ok(())
}

/// Issue 11's training target: at 4x the frames (HunyuanVideo), our radial forward + backward
/// this many times faster than this peer's dense forward + backward.
const FWD_BWD_TARGET: (&str, usize, &str, f64) = ("hunyuan", 4, "cudnn dense", 4.0);

/// The radial attention backward: our time and TFLOPS, the ratio to our forward on the same
/// mask, and the peers' backward rows of the same op (ci/peers.py: FlexAttention on the same
/// mask, cuDNN and flash dense); then forward + backward, ours against each peer's.
fn attention_backward_section(
    md: &mut String,
    ours: &BenchFile,
    peers: Option<&BenchFile>,
) -> Result<(), Box<dyn std::error::Error>> {
    const OP: &str = crate::cases::ATTENTION_BACKWARD_OP;
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    let peer_impls = impls(OP, peers);
    writeln!(
        md,
        "\n## Radial attention backward (bf16, head_dim 128, batch 1)\n"
    )?;
    writeln!(
        md,
        "TFLOPS count 2.5 times the forward's FLOP (5 matmuls over every on block). Backward / \
         forward = our backward time over our radial forward time on the same mask. Ours / peer = \
         peer time / our time; a dense peer's backward covers every block of the same tokens, so \
         ours / dense peer is the radial backward's speedup over it. Tessera's default backward \
         may add dq in any order (the fused atomic plan on sm_90a); `deterministic` is the same \
         op asking for a bitwise reproducible dq (ours det. / peer = peer time / that time).\n"
    )?;
    let [default_impl, deterministic_impl] = crate::cases::ATTENTION_BACKWARD_IMPLS;
    write!(
        md,
        "| shape | Tessera backward ms | TFLOPS | backward / forward | deterministic ms |"
    )?;
    for p in &peer_impls {
        write!(md, " {p} ms | ours / {p} | ours det. / {p} |")?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "|---|---|---|---|---|{}",
        "---|".repeat(3 * peer_impls.len())
    )?;
    for s in &shapes {
        let b = ours.find(OP, s, default_impl);
        let det = time(ours.find(OP, s, deterministic_impl));
        let fwd = ours.find("attention", s, "tessera radial");
        write!(
            md,
            "| {s} | {} | {} | {} | {} |",
            ms(time(b)),
            f(tflops(b), 0),
            f(ratio(time(b), time(fwd)), 2),
            ms(det)
        )?;
        for p in &peer_impls {
            let peer = time(find(peers, OP, s, p));
            write!(
                md,
                " {} | {} | {} |",
                ms(peer),
                f(ratio(peer, time(b)), 2),
                f(ratio(peer, det), 2)
            )?;
        }
        writeln!(md)?;
    }
    if peer_impls.is_empty() {
        return Ok(());
    }
    let (target_model, target_mult, target_peer, target) = FWD_BWD_TARGET;
    let target_shape = crate::cases::AttentionCase::published(target_model, target_mult).key();
    writeln!(
        md,
        "\n### Forward + backward (the attention of a training step)\n"
    )?;
    writeln!(
        md,
        "Each side's `attention` row plus its `attention_backward` row of the same shape (the \
         dense peers' forward row is their inference forward, which keeps no lse: a little \
         faster than the forward of training). Ours / peer = peer fwd+bwd time / ours. Target \
         (issue 11): ours / {target_peer} >= {target} at {target_shape} (4x the frames).\n"
    )?;
    write!(md, "| shape | Tessera radial fwd+bwd ms |")?;
    for p in &peer_impls {
        write!(md, " {p} fwd+bwd ms | ours / {p} |")?;
    }
    writeln!(md)?;
    writeln!(md, "|---|---|{}", "---|".repeat(2 * peer_impls.len()))?;
    let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
    for s in &shapes {
        let ours_both = sum(
            time(ours.find("attention", s, "tessera radial")),
            time(ours.find(OP, s, default_impl)),
        );
        write!(md, "| {s} | {} |", ms(ours_both))?;
        for p in &peer_impls {
            let peer_both = sum(
                time(find(peers, "attention", s, p)),
                time(find(peers, OP, s, p)),
            );
            write!(
                md,
                " {} | {} |",
                ms(peer_both),
                f(ratio(peer_both, ours_both), 2)
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn attention_section(
    md: &mut String,
    ours: &BenchFile,
    peers: Option<&BenchFile>,
    vulkan: Option<&BenchFile>,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    const OP: &str = "attention";
    let shapes = shapes(OP, &[ours]);
    if shapes.is_empty() {
        return Ok(());
    }
    let peer_impls = impls(OP, peers);
    writeln!(
        md,
        "\n## Radial attention vs dense (bf16, head_dim 128, batch 1, block 128)\n"
    )?;
    writeln!(
        md,
        "Radial rows use the very same BSR mask (written by `tessera bench --masks`, loaded by \
         ci/peers.py). TFLOPS count every on block in full. Speedup = dense time / radial time \
         of the same implementation family.\n"
    )?;
    write!(
        md,
        "| shape | density | Tessera radial ms | TFLOPS | Tessera dense ms | TFLOPS | our radial speedup |"
    )?;
    for p in &peer_impls {
        write!(md, " {p} ms |")?;
    }
    for p in &peer_impls {
        write!(md, " ours / {p} |")?;
    }
    if vulkan.is_some() {
        write!(
            md,
            " Vulkan radial ms | Vulkan dense ms | Vulkan / CUDA (radial) |"
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "|---|---|---|---|---|---|---|{}",
        "---|".repeat(2 * peer_impls.len() + 3 * usize::from(vulkan.is_some()))
    )?;
    for s in &shapes {
        let rr = ours.find(OP, s, "tessera radial");
        let rd = ours.find(OP, s, "tessera dense");
        let density = rr
            .and_then(|r| r.params.get("density"))
            .and_then(|v| v.as_f64());
        write!(
            md,
            "| {s} | {} | {} | {} | {} | {} | {} |",
            f(density, 3),
            ms(time(rr)),
            f(tflops(rr), 0),
            ms(time(rd)),
            f(tflops(rd), 0),
            f(ratio(time(rd), time(rr)), 2)
        )?;
        for p in &peer_impls {
            write!(md, " {} |", ms(time(find(peers, OP, s, p))))?;
        }
        for p in &peer_impls {
            let mine = if p.contains("radial") { rr } else { rd };
            write!(
                md,
                " {} |",
                f(ratio(time(find(peers, OP, s, p)), time(mine)), 2)
            )?;
        }
        if vulkan.is_some() {
            let vr = find(vulkan, OP, s, &format!("{VK} radial"));
            let vd = find(vulkan, OP, s, &format!("{VK} dense"));
            write!(
                md,
                " {} | {} | {} |",
                ms(time(vr)),
                ms(time(vd)),
                f(ratio(time(rr), time(vr)), 3)
            )?;
        }
        writeln!(md)?;
    }
    // One plot per model: time against frames.
    let mut models: Vec<String> = Vec::new();
    for r in ours.records.iter().filter(|r| r.op == OP) {
        if let Some(m) = r.params.get("model").and_then(|v| v.as_str()) {
            if !models.iter().any(|x| x == m) {
                models.push(m.to_string());
            }
        }
    }
    let frames_of = |r: &Record| r.params.get("frames").and_then(|v| v.as_f64());
    for model in &models {
        let mut names = vec!["tessera radial".to_string(), "tessera dense".to_string()];
        names.extend(peer_impls.iter().cloned());
        if vulkan.is_some() {
            names.extend([format!("{VK} radial"), format!("{VK} dense")]);
        }
        let series: Vec<Series> = names
            .iter()
            .map(|n| {
                let mut points: Vec<(f64, f64)> = shapes
                    .iter()
                    .filter(|s| s.starts_with(&format!("{model} ")))
                    .filter_map(|s| {
                        let r = ours
                            .find(OP, s, n)
                            .or_else(|| find(peers, OP, s, n))
                            .or_else(|| find(vulkan, OP, s, n))?;
                        let fr = frames_of(r)
                            .or_else(|| ours.find(OP, s, "tessera radial").and_then(frames_of))?;
                        Some((fr, r.time_ms?))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: n.clone(),
                    points,
                }
            })
            .collect();
        let file = format!("attention_{model}.png");
        plot_or_warn(line_plot(
            &dir.join(&file),
            &format!("{model}: attention time against latent frames (3840 tokens each)"),
            "latent frames",
            "ms (log)",
            &[],
            &series,
            true,
        ));
        writeln!(md, "\n![{model} attention time]({file})")?;
    }
    Ok(())
}

/// The peers' numbers next to FACTS.md §5 where the shapes match (|diff| <= 15% expected).
fn facts_section(md: &mut String, peers: Option<&BenchFile>) -> std::fmt::Result {
    let Some(p) = peers else {
        return Ok(());
    };
    writeln!(
        md,
        "\n## Peers against FACTS.md §5 (earlier measurement on this machine)\n"
    )?;
    writeln!(
        md,
        "`now` is the event-timed median of this run (the GPU's time: the peers' launches are \
         queued behind a sleep kernel); for FP8 GEMM two more ways of timing the same calls, to \
         see how the earlier numbers were taken: `host` times each call alone on the host clock \
         with a synchronize, `idle` between two CUDA events recorded on an idle GPU (both include \
         PyTorch's dispatch of the call). Rows beyond 15% are marked.\n"
    )?;
    writeln!(
        md,
        "| op | shape | peer | FACTS | now | diff | host | diff (host) | idle | diff (idle) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    let pct = |now: Option<f64>, facts: f64| -> String {
        match now.map(|n| 100.0 * (n - facts) / facts) {
            Some(d) if d.abs() > 15.0 => format!("{d:+.1}% **(>15%)**"),
            Some(d) => format!("{d:+.1}%"),
            None => "–".into(),
        }
    };
    let mut line = |op: &str,
                    shape: &str,
                    peer: &str,
                    facts: f64,
                    now: Option<f64>,
                    host: Option<f64>,
                    idle: Option<f64>,
                    unit: &str| {
        let diff = |x: Option<f64>| {
            if x.is_some() {
                pct(x, facts)
            } else {
                "–".into()
            }
        };
        writeln!(
            md,
            "| {op} | {shape} | {peer} | {facts} {unit} | {} | {} | {} | {} | {} | {} |",
            f(now, 1),
            pct(now, facts),
            f(host, 1),
            diff(host),
            f(idle, 1),
            diff(idle)
        )
    };
    for (m, n, k, tw, blk) in FACTS_GEMM {
        let s = crate::cases::gemm_key(m, n, k);
        let mut peer = |name: &str, facts: f64| {
            line(
                "fp8_gemm",
                &s,
                name,
                facts,
                tflops(p.find("fp8_gemm", &s, name)),
                tflops(p.find("fp8_gemm", &s, &format!("{name} (host)"))),
                tflops(p.find("fp8_gemm", &s, &format!("{name} (idle events)"))),
                "TFLOPS",
            )
        };
        peer("cublas tensorwise", tw)?;
        if let Some(b) = blk {
            peer("cublas block", b)?;
        }
    }
    for (s, cudnn, flex) in FACTS_ATTENTION {
        line(
            "attention",
            s,
            "cudnn dense",
            cudnn,
            time(p.find("attention", s, "cudnn dense")),
            None,
            None,
            "ms",
        )?;
        line(
            "attention",
            s,
            "flex radial",
            flex,
            time(p.find("attention", s, "flex radial")),
            None,
            None,
            "ms",
        )?;
    }
    for s in ["b64 sk4096 hq128 sq1 bf16", "b128 sk8192 hq128 sq1 bf16"] {
        line(
            "mla_decode",
            s,
            "torch",
            645.0,
            gbps(p.find("mla_decode", s, "torch")),
            None,
            None,
            "GB/s (620-670)",
        )?;
    }
    Ok(())
}
