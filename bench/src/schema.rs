//! The JSON written by `tessera bench` and by `ci/peers.py` (the same schema): a header with the
//! device, date, commit and the ceilings measured in the same run, then one record per
//! (op, shape, impl).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One benchmark file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchFile {
    /// Where and when it was measured.
    pub header: Header,
    /// One record per (op, shape, impl).
    pub records: Vec<Record>,
}

/// The header of a [`BenchFile`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Header {
    /// Who wrote it: `tessera` or `peers`.
    pub tool: String,
    /// The device's name.
    pub device: String,
    /// UTC date and time, `YYYY-MM-DD HH:MM:SS UTC`.
    pub date: String,
    /// Git commit of the code measured (`unknown` if not known).
    pub commit: String,
    /// Backend or framework (e.g. `cuda`, `torch 2.9.0+cu130`).
    pub backend: String,
    /// `standard` or `quick`.
    pub suite: String,
    /// The ceilings measured in the same run.
    pub ceilings: Ceilings,
    /// How the numbers were taken (timing method, buffers, FLOP and byte counts).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Ceilings measured in the same run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ceilings {
    /// Device-to-device copy bandwidth, GB/s counting read + write bytes.
    pub copy_gbps: Option<f64>,
    /// Dense bf16 matmul rate, TFLOPS.
    pub matmul_tflops: Option<f64>,
    /// What measured the matmul rate (e.g. `cuBLAS bf16 8192^3`).
    pub matmul_impl: String,
}

/// One measurement.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// `fp8_gemm`, `mla_decode` or `attention`.
    pub op: String,
    /// The shape key shared with the peers (e.g. `M64 N2112 K7168`).
    pub shape: String,
    /// Implementation, e.g. `tessera`, `tessera radial`, `cublas block`, `flex radial`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Shape parameters (numbers and strings).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Median time of one run, milliseconds.
    pub time_ms: Option<f64>,
    /// Fastest run, milliseconds.
    #[serde(default)]
    pub min_ms: Option<f64>,
    /// Timed runs.
    #[serde(default)]
    pub reps: usize,
    /// Useful FLOP over the median time, 1e12/s.
    pub tflops: Option<f64>,
    /// Minimum bytes moved over the median time, 1e9/s.
    pub gbps: Option<f64>,
    /// `tflops` in percent of the matmul ceiling.
    pub pct_matmul: Option<f64>,
    /// `gbps` in percent of the copy ceiling.
    pub pct_copy: Option<f64>,
    /// Why there is no time (the error met), if so.
    #[serde(default)]
    pub error: Option<String>,
}

impl Record {
    /// A timed measurement: `(median, min, reps)` as the executors' timers return them (ms, ms,
    /// timed runs); the rates are filled in later.
    pub fn timed(
        op: &str,
        shape: String,
        implementation: &str,
        params: BTreeMap<String, serde_json::Value>,
        (median, min, reps): (f64, f64, usize),
    ) -> Self {
        Record {
            op: op.into(),
            shape,
            implementation: implementation.into(),
            params,
            time_ms: Some(median),
            min_ms: Some(min),
            reps,
            ..Default::default()
        }
    }

    /// A measurement that failed or was skipped: no time, `error` says why.
    pub fn failed(op: &str, shape: String, implementation: &str, error: String) -> Self {
        Record {
            op: op.into(),
            shape,
            implementation: implementation.into(),
            error: Some(error),
            ..Default::default()
        }
    }
}

impl BenchFile {
    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file as pretty JSON to `path` if given (through a temporary file, so that a run
    /// cut short leaves the records measured so far); called after every record.
    pub fn save_to(&self, path: Option<&std::path::Path>) -> Result<(), String> {
        let Some(path) = path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The record of (op, shape, impl), if any.
    pub fn find(&self, op: &str, shape: &str, implementation: &str) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.op == op && r.shape == shape && r.implementation == implementation)
    }
}

/// Fills `tflops`, `gbps` and the percentages of `record` from its time, FLOP and byte counts.
pub fn fill_rates(record: &mut Record, flops: f64, bytes: f64, ceilings: &Ceilings) {
    if let Some(ms) = record.time_ms {
        let s = ms * 1e-3;
        if s > 0.0 {
            let tflops = flops / s / 1e12;
            let gbps = bytes / s / 1e9;
            record.tflops = Some(tflops);
            record.gbps = Some(gbps);
            record.pct_matmul = ceilings.matmul_tflops.map(|c| 100.0 * tflops / c);
            record.pct_copy = ceilings.copy_gbps.map(|c| 100.0 * gbps / c);
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of now.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
