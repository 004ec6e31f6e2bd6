//! Timing candidates on the device, for the plan cache's tuning.
//!
//! Each candidate runs once untimed (which compiles and loads it), then [`TUNE_REPS`] times,
//! each between two CUDA events on the stream; its time is the median. The ops run on scratch
//! buffers allocated for the purpose and filled with random data, never on a caller's buffers.

use super::ShapeClass;
use crate::runtime::driver_error;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;
use tessera_core::Result;

/// Timed launches per candidate.
pub const TUNE_REPS: usize = 5;

/// Bytes of operand sets a tuner rotates over (several times the H100/H200's 50-60 MB of L2), as
/// `tessera bench` does, so that a small shape is not timed out of L2.
pub const TUNE_ROTATE_BYTES: usize = 200 << 20;

/// What a tuning measured.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneOutcome {
    /// The shape class tuned.
    pub shape: ShapeClass,
    /// The candidates' labels, in order.
    pub labels: Vec<String>,
    /// Their median times, milliseconds.
    pub ms: Vec<f64>,
    /// The index of the fastest.
    pub winner: usize,
}

impl TuneOutcome {
    /// Every candidate's time, fastest first: one `<ms> ms  <label>` line each (times that are
    /// not finite sort last).
    pub fn ranking(&self) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        order.sort_by(|&a, &b| self.ms[a].total_cmp(&self.ms[b]));
        order
            .into_iter()
            .map(|i| format!("{:.4} ms  {}", self.ms[i], self.labels[i]))
            .collect()
    }

    /// A one-line summary: the winner, its time, and the number of candidates.
    pub fn summary(&self) -> String {
        format!(
            "{} {:.4} ms (fastest of {})",
            self.labels[self.winner],
            self.ms[self.winner],
            self.labels.len()
        )
    }
}

/// The median milliseconds of `run(candidate)` for each candidate, on `stream`.
pub fn time_each<V>(
    stream: &Arc<CudaStream>,
    candidates: &[V],
    mut run: impl FnMut(&V) -> Result<()>,
) -> Result<Vec<f64>> {
    let sync = |s: &Arc<CudaStream>| {
        s.synchronize()
            .map_err(|e| driver_error("synchronizing after a tuning run", e))
    };
    let event = |s: &Arc<CudaStream>| {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_error("recording a tuning event", e))
    };
    let mut times = Vec::with_capacity(candidates.len());
    for c in candidates {
        run(c)?;
        sync(stream)?;
        let mut events = Vec::with_capacity(TUNE_REPS);
        for _ in 0..TUNE_REPS {
            let start = event(stream)?;
            run(c)?;
            let end = event(stream)?;
            events.push((start, end));
        }
        sync(stream)?;
        let mut ms = events
            .iter()
            .map(|(s, e)| {
                s.elapsed_ms(e)
                    .map(f64::from)
                    .map_err(|e| driver_error("reading a tuning event", e))
            })
            .collect::<Result<Vec<f64>>>()?;
        ms.sort_by(f64::total_cmp);
        times.push(ms[ms.len() / 2]);
    }
    Ok(times)
}

/// SplitMix64, for scratch data.
#[derive(Clone, Debug)]
pub struct ScratchRng(pub u64);

impl ScratchRng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// A finite E4M3 code of moderate magnitude (exponent field 4..=10).
    pub fn e4m3(&mut self) -> u8 {
        let r = self.next_u64();
        (((r & 1) as u8) << 7) | ((4 + ((r >> 1) % 7) as u8) << 3) | ((r >> 4) & 7) as u8
    }
}

/// A scratch buffer of `len` elements (at least 1) holding `pattern` repeated (uploaded once,
/// then copied on the device).
pub fn scratch_buffer<T: DeviceRepr + ValidAsZeroBits + Copy>(
    stream: &Arc<CudaStream>,
    len: usize,
    pattern: &[T],
) -> Result<CudaSlice<T>> {
    let len = len.max(1);
    let mut dst = stream
        .alloc_zeros::<T>(len)
        .map_err(|e| driver_error("allocating a tuning buffer", e))?;
    if pattern.is_empty() {
        return Ok(dst);
    }
    let pat = stream
        .clone_htod(&pattern[..pattern.len().min(len)])
        .map_err(|e| driver_error("uploading a tuning pattern", e))?;
    let step = pat.len();
    let mut at = 0;
    while at < len {
        let n = step.min(len - at);
        let mut view = dst.slice_mut(at..at + n);
        stream
            .memcpy_dtod(&pat.slice(0..n), &mut view)
            .map_err(|e| driver_error("filling a tuning buffer", e))?;
        at += n;
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_lists_every_candidate_fastest_first() {
        let outcome = TuneOutcome {
            shape: ShapeClass::Gemm {
                m_bucket: 64,
                n: 2112,
                k: 7168,
                grouping: 0,
                groups_bucket: 1,
            },
            labels: vec!["a".into(), "b".into(), "c".into()],
            ms: vec![0.3, 0.1, 0.2],
            winner: 1,
        };
        assert_eq!(
            outcome.ranking(),
            ["0.1000 ms  b", "0.2000 ms  c", "0.3000 ms  a"]
        );
        assert_eq!(outcome.summary(), "b 0.1000 ms (fastest of 3)");
    }
}
