//! The plan cache: which variant each (op, shape class) runs on this device and architecture.
//!
//! The default pick is the heuristic's ([`super::heuristics`]). With `TESSERA_TUNE=1` (read once
//! when the backend is created), the first use of a shape class times every candidate on the
//! device and keeps the fastest; `tessera tune` does the same for the standard shapes. Tuned
//! winners are written as JSON next to the NVRTC disk cache
//! ([`crate::compile::disk_cache_dir`]), one file per device and architecture
//! (`plans-<arch>-<device>.json`), atomically (a temporary file renamed over it), and read when
//! the backend is created. A file that cannot be read or parsed, or whose format version, device
//! or architecture differ, is ignored (the heuristic applies); so is a stored variant that is no
//! longer a candidate for its shape.
//!
//! Shape classes ([`ShapeClass`]) are coarse so that one timing serves many calls:
//! - GEMM: m rounded up to a power of two, n and k exact;
//! - attention: head_dim, dtype and block size exact, tokens and batch x heads rounded up to
//!   powers of two, the mask's density rounded up to eighths;
//! - MLA decode: the layout and the rows per request (`s_q * heads`) exact, batch and the
//!   longest sequence rounded up to powers of two;
//! - quantizers: input, rule and granularity exact, rows rounded up to a power of two, cols
//!   exact.

use super::attention::HalfType;
use super::gemm::GemmVariant;
use super::mla::CacheFormat;
use super::quantize::{QuantizeGranularity, QuantizeInput};
use super::tune::TuneOutcome;
use super::{ArchSpec, AttentionVariant, KernelSpec, MlaDecodeVariant, QuantizeVariant};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use tessera_core::{BackendKind, Error, Result};

/// The version of the plan file's format; a file of another version is ignored. 7: the FP8
/// cache gained Hopper decode candidates (`MlaDecodeVariant`s of kernel `wgmma` and format
/// `fp8`), so that plans tuned or picked without them are made again. 8: the same for the FP8
/// cache's 64-row seesaw (`seesaw` with format `fp8`).
pub const PLAN_FORMAT_VERSION: u32 = 8;

pub use tessera_core::ops::size_bucket as bucket;

/// A coarse class of shapes that share one plan (see the module doc for each op's bucketing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShapeClass {
    /// FP8 GEMM.
    Gemm {
        /// m rounded up to a power of two.
        m_bucket: u64,
        /// n.
        n: u64,
        /// k.
        k: u64,
        /// 0 one GEMM, 1 contiguous groups, 2 masked groups.
        grouping: u8,
        /// Groups rounded up to a power of two (1 for one GEMM).
        groups_bucket: u64,
    },
    /// Block-sparse attention.
    Attention {
        /// head_dim.
        head_dim: u64,
        /// Element type (`None`: not a 16-bit type, which no kernel takes).
        half: Option<HalfType>,
        /// Mask block size.
        block: u64,
        /// Tokens rounded up to a power of two.
        tokens_bucket: u64,
        /// batch x heads rounded up to a power of two.
        batch_heads_bucket: u64,
        /// The mask's density rounded up to eighths (0..=8).
        density_eighths: u8,
    },
    /// MLA decode.
    MlaDecode {
        /// Record format.
        format: CacheFormat,
        /// Latent width.
        latent_dim: u64,
        /// RoPE width.
        rope_dim: u64,
        /// Tokens per page.
        page_size: u64,
        /// Query rows per request, `s_q * heads`.
        rows: u64,
        /// Batch rounded up to a power of two.
        batch_bucket: u64,
        /// Longest sequence rounded up to a power of two.
        seq_bucket: u64,
    },
    /// FP8 quantizers.
    Quantize {
        /// Input type (`None`: not one the kernels take).
        input: Option<QuantizeInput>,
        /// Power-of-two scales.
        pow2: bool,
        /// Scale groups.
        granularity: QuantizeGranularity,
        /// Rows rounded up to a power of two.
        rows_bucket: u64,
        /// Columns.
        cols: u64,
    },
}

/// A planned variant of any op (what the plan file stores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", content = "variant", rename_all = "snake_case")]
pub enum PlannedVariant {
    /// FP8 GEMM.
    Gemm(GemmVariant),
    /// Block-sparse attention.
    Attention(AttentionVariant),
    /// MLA decode.
    MlaDecode(MlaDecodeVariant),
    /// FP8 quantizers.
    Quantize(QuantizeVariant),
}

impl PlannedVariant {
    /// The variant's label ([`KernelSpec::label`]).
    pub fn label(&self) -> String {
        match self {
            PlannedVariant::Gemm(v) => v.label(),
            PlannedVariant::Attention(v) => v.label(),
            PlannedVariant::MlaDecode(v) => v.label(),
            PlannedVariant::Quantize(v) => v.label(),
        }
    }
}

/// An op at a shape, as the plan cache sees it: its shape class, its candidates and the
/// heuristic's pick. Implemented in [`super::heuristics`].
pub trait PlannedOp {
    /// The op's variant type.
    type Variant: KernelSpec + Clone + PartialEq;
    /// The class of shapes sharing this shape's plan.
    fn shape_class(&self) -> ShapeClass;
    /// The candidates on `arch`, non-empty, the first always valid (the fallback); an error
    /// when the op at this shape has no kernel on `arch`.
    fn candidates(&self, arch: &ArchSpec) -> Result<Vec<Self::Variant>>;
    /// The index of the heuristic's pick among `candidates`.
    fn heuristic(&self, candidates: &[Self::Variant], arch: &ArchSpec) -> usize;
    /// Wraps a variant for the cache.
    fn wrap(v: Self::Variant) -> PlannedVariant;
    /// Unwraps a cached variant (None: another op's).
    fn unwrap(v: &PlannedVariant) -> Option<Self::Variant>;
}

/// Times candidates: gets them, returns their median milliseconds in the same order (see
/// [`super::tune::time_each`]).
pub type Timer<'a, V> = dyn FnMut(&[V]) -> Result<Vec<f64>> + 'a;

/// Where a plan came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlanOrigin {
    /// The heuristic's pick (not persisted).
    Heuristic,
    /// Timed on this device in this process: the winner's median milliseconds.
    Tuned {
        /// Median time of the winner.
        ms: f64,
    },
    /// Set by [`PlanCache::pin`] (not persisted).
    Pinned,
    /// Read from the plan file and not yet checked against the candidates.
    Loaded {
        /// Median time of the winner when it was tuned.
        ms: f64,
    },
}

#[derive(Clone, Copy, Debug)]
struct PlanEntry {
    variant: PlannedVariant,
    origin: PlanOrigin,
}

/// One line of the plan file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    /// The shape class.
    pub shape: ShapeClass,
    /// The winner.
    pub variant: PlannedVariant,
    /// Its median time when tuned, milliseconds.
    pub ms: f64,
}

/// The plan file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanFile {
    /// [`PLAN_FORMAT_VERSION`].
    pub format: u32,
    /// The device's name.
    pub device: String,
    /// The NVRTC target (e.g. `sm_90a`).
    pub arch: String,
    /// The tuned winners.
    pub plans: Vec<StoredPlan>,
}

/// The plans of one device and architecture (one per [`crate::CudaBackend`]), thread-safe.
#[derive(Debug)]
pub struct PlanCache {
    device: String,
    arch: ArchSpec,
    tune_on_first_use: bool,
    file: Option<PathBuf>,
    entries: RwLock<HashMap<ShapeClass, PlanEntry>>,
}

impl PlanCache {
    /// A cache for `device` on `arch`, with the tuned plans of `file` (if it exists and matches;
    /// see the module doc). `tune_on_first_use`: time the candidates of each new shape class.
    pub fn new(
        device: &str,
        arch: ArchSpec,
        tune_on_first_use: bool,
        file: Option<PathBuf>,
    ) -> Self {
        let mut entries = HashMap::new();
        if let Some(f) = file
            .as_deref()
            .and_then(|p| read_plan_file(p, device, &arch))
        {
            for p in f.plans {
                entries.insert(
                    p.shape,
                    PlanEntry {
                        variant: p.variant,
                        origin: PlanOrigin::Loaded { ms: p.ms },
                    },
                );
            }
        }
        Self {
            device: device.to_string(),
            arch,
            tune_on_first_use,
            file,
            entries: RwLock::new(entries),
        }
    }

    /// The plan file of `device` on `arch` in the NVRTC disk cache's folder, if there is one.
    pub fn default_file(device: &str, arch: &ArchSpec) -> Option<PathBuf> {
        crate::compile::disk_cache_dir().map(|d| d.join(plan_file_name(device, arch)))
    }

    /// The plan file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether the first use of a shape class tunes it (`TESSERA_TUNE=1` at backend creation).
    pub fn tunes_on_first_use(&self) -> bool {
        self.tune_on_first_use
    }

    /// The architecture the plans are for.
    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    /// The plan of `class`, if one was made or loaded.
    pub fn get(&self, class: &ShapeClass) -> Option<(PlannedVariant, PlanOrigin)> {
        self.read().get(class).map(|e| (e.variant, e.origin))
    }

    /// The variant for `shape`: the cached plan of its class, else (first use of the class) the
    /// fastest candidate by `time` when tuning on first use, else the heuristic's pick. `time`
    /// gets the candidates and returns their median milliseconds, in order.
    pub fn plan<P: PlannedOp>(
        &self,
        shape: &P,
        time: &mut Timer<'_, P::Variant>,
    ) -> Result<P::Variant> {
        let class = shape.shape_class();
        let cached = self.read().get(&class).copied();
        if let Some(e) = cached {
            if !matches!(e.origin, PlanOrigin::Loaded { .. }) {
                if let Some(v) = P::unwrap(&e.variant) {
                    return Ok(v);
                }
            }
        }
        let candidates = shape.candidates(&self.arch)?;
        if let Some(PlanEntry {
            variant,
            origin: PlanOrigin::Loaded { ms },
        }) = cached
        {
            // A stored winner counts only if it is still a candidate here.
            if let Some(v) = P::unwrap(&variant).filter(|v| candidates.contains(v)) {
                self.insert(class, variant, PlanOrigin::Tuned { ms });
                return Ok(v);
            }
        }
        if self.tune_on_first_use && candidates.len() > 1 {
            let outcome = self.tune_candidates(shape, &candidates, time)?;
            // The winner is kept in memory whatever happens to the file (a read-only cache
            // folder only costs the next process a new tuning).
            let _ = self.save();
            return Ok(candidates[outcome.winner].clone());
        }
        let pick = shape
            .heuristic(&candidates, &self.arch)
            .min(candidates.len() - 1);
        let v = candidates[pick].clone();
        self.insert(class, P::wrap(v.clone()), PlanOrigin::Heuristic);
        Ok(v)
    }

    /// Makes `variant`, which must be one of `shape`'s candidates on this architecture, the
    /// plan of `shape`'s class: to run one candidate through an op's usual API (tests,
    /// experiments). Not persisted.
    pub fn pin<P: PlannedOp>(&self, shape: &P, variant: P::Variant) -> Result<()> {
        let candidates = shape.candidates(&self.arch)?;
        if !candidates.contains(&variant) {
            return Err(Error::invalid(
                variant.op(),
                "variant",
                format!("one of the {} candidates for this shape", candidates.len()),
                format!("{variant:?}"),
            ));
        }
        self.insert(shape.shape_class(), P::wrap(variant), PlanOrigin::Pinned);
        Ok(())
    }

    /// Times every candidate of `shape` with `time` and records the fastest as the plan of its
    /// class (whether or not tuning on first use is on). Does not write the file: see
    /// [`PlanCache::save`].
    pub fn tune<P: PlannedOp>(
        &self,
        shape: &P,
        time: &mut Timer<'_, P::Variant>,
    ) -> Result<TuneOutcome> {
        let candidates = shape.candidates(&self.arch)?;
        self.tune_candidates(shape, &candidates, time)
    }

    fn tune_candidates<P: PlannedOp>(
        &self,
        shape: &P,
        candidates: &[P::Variant],
        time: &mut Timer<'_, P::Variant>,
    ) -> Result<TuneOutcome> {
        let ms = time(candidates)?;
        if ms.len() != candidates.len() {
            return Err(Error::Device {
                backend: BackendKind::Cuda,
                message: format!(
                    "tuning timed {} of {} candidates",
                    ms.len(),
                    candidates.len()
                ),
            });
        }
        let winner = ms
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_finite())
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .ok_or_else(|| Error::Device {
                backend: BackendKind::Cuda,
                message: "tuning: no candidate gave a finite time".into(),
            })?;
        let class = shape.shape_class();
        self.insert(
            class.clone(),
            P::wrap(candidates[winner].clone()),
            PlanOrigin::Tuned { ms: ms[winner] },
        );
        Ok(TuneOutcome {
            shape: class,
            labels: candidates.iter().map(|c| c.label()).collect(),
            ms,
            winner,
        })
    }

    /// Writes the tuned plans (those tuned here and those read from the file) to the plan file,
    /// merged with what the file holds now (ours win), atomically. Returns the file written, or
    /// `None` when there is no cache folder or nothing tuned.
    pub fn save(&self) -> Result<Option<PathBuf>> {
        let Some(path) = self.file.clone() else {
            return Ok(None);
        };
        let ours: Vec<StoredPlan> = self
            .read()
            .iter()
            .filter_map(|(shape, e)| match e.origin {
                PlanOrigin::Tuned { ms } | PlanOrigin::Loaded { ms } => Some(StoredPlan {
                    shape: shape.clone(),
                    variant: e.variant,
                    ms,
                }),
                PlanOrigin::Heuristic | PlanOrigin::Pinned => None,
            })
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        let mut merged: HashMap<ShapeClass, StoredPlan> =
            read_plan_file(&path, &self.device, &self.arch)
                .map(|f| f.plans.into_iter().map(|p| (p.shape.clone(), p)).collect())
                .unwrap_or_default();
        for p in ours {
            merged.insert(p.shape.clone(), p);
        }
        let mut plans: Vec<StoredPlan> = merged.into_values().collect();
        plans.sort_by_key(|p| serde_json::to_string(&p.shape).unwrap_or_default());
        let file = PlanFile {
            format: PLAN_FORMAT_VERSION,
            device: self.device.clone(),
            arch: self.arch.nvrtc_target(),
            plans,
        };
        write_plan_file(&path, &file).map_err(|e| Error::Device {
            backend: BackendKind::Cuda,
            message: format!("writing the plan file {}: {e}", path.display()),
        })?;
        Ok(Some(path))
    }

    fn insert(&self, class: ShapeClass, variant: PlannedVariant, origin: PlanOrigin) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(class, PlanEntry { variant, origin });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ShapeClass, PlanEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `plans-<arch>-<device>.json`, the device name reduced to lower-case letters, digits and `-`.
pub fn plan_file_name(device: &str, arch: &ArchSpec) -> String {
    let slug: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "plans-{}-{}.json",
        arch.nvrtc_target(),
        slug.trim_matches('-')
    )
}

/// Reads a plan file; `None` if it cannot be read or parsed, or is of another format version,
/// device or architecture.
pub fn read_plan_file(path: &Path, device: &str, arch: &ArchSpec) -> Option<PlanFile> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: PlanFile = serde_json::from_str(&text).ok()?;
    (file.format == PLAN_FORMAT_VERSION
        && file.device == device
        && file.arch == arch.nvrtc_target())
    .then_some(file)
}

/// Writes a plan file atomically: to a temporary file in the same folder, then renamed over
/// `path` (a reader sees the old file or the new one, never half of one).
pub fn write_plan_file(path: &Path, file: &PlanFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MmaSyncGemm;
    use tessera_core::Fp8Gemm;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-plan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn h200() -> ArchSpec {
        ArchSpec::from_compute_capability(9, 0, 132).unwrap()
    }

    /// A timer that makes candidate `fastest` the winner, counting its calls.
    fn timer(
        fastest: usize,
        calls: &mut usize,
    ) -> impl FnMut(&[GemmVariant]) -> Result<Vec<f64>> + '_ {
        move |c: &[GemmVariant]| {
            *calls += 1;
            Ok((0..c.len())
                .map(|i| if i == fastest { 1.0 } else { 2.0 + i as f64 })
                .collect())
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket(0), 1);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(64), 64);
        assert_eq!(bucket(65), 128);
        assert_eq!(
            Fp8Gemm::new(100, 2112, 512).shape_class(),
            ShapeClass::Gemm {
                m_bucket: 128,
                n: 2112,
                k: 512,
                grouping: 0,
                groups_bucket: 1,
            }
        );
    }

    #[test]
    fn heuristic_by_default_and_cached() {
        let cache = PlanCache::new("test gpu", h200(), false, None);
        let op = Fp8Gemm::new(4096, 7168, 2048);
        let mut calls = 0;
        let v = cache.plan(&op, &mut timer(0, &mut calls)).unwrap();
        // On Hopper the heuristic picks a wgmma tile (128 x 176: 10 waves, where 160 takes 11).
        let wide = crate::plan::WgmmaGemm::fitted(128, 176, 2, 1, 1, h200().max_smem_per_block);
        assert_eq!(v, GemmVariant::Wgmma(wide.unwrap()));
        assert_eq!(calls, 0, "no timing without tuning");
        assert_eq!(
            cache.get(&op.shape_class()).unwrap().1,
            PlanOrigin::Heuristic
        );
        assert_eq!(cache.save().unwrap(), None, "no file, nothing tuned");
    }

    #[test]
    fn tuning_persists_and_round_trips() {
        let dir = temp_dir("roundtrip");
        let path = dir.join(plan_file_name("NVIDIA H200 (test)", &h200()));
        assert!(path.ends_with("plans-sm_90a-nvidia-h200--test.json"));
        let op = Fp8Gemm::new(64, 2112, 512);
        let tuned = {
            let cache = PlanCache::new("NVIDIA H200 (test)", h200(), true, Some(path.clone()));
            let mut calls = 0;
            let candidates = op.candidates(&h200()).unwrap();
            let v = cache.plan(&op, &mut timer(2, &mut calls)).unwrap();
            assert_eq!(v, candidates[2]);
            // Same class (m 33..=64): cached, no second timing.
            let again = cache
                .plan(&Fp8Gemm::new(40, 2112, 512), &mut timer(0, &mut calls))
                .unwrap();
            assert_eq!((again, calls), (v, 1));
            v
        };
        // The file was written atomically (no temporary left) and a new cache reads it.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [path.file_name().unwrap().to_string_lossy().into_owned()]
        );
        let cache = PlanCache::new("NVIDIA H200 (test)", h200(), false, Some(path.clone()));
        assert!(matches!(
            cache.get(&op.shape_class()),
            Some((_, PlanOrigin::Loaded { ms })) if ms == 1.0
        ));
        let mut calls = 0;
        assert_eq!(cache.plan(&op, &mut timer(0, &mut calls)).unwrap(), tuned);
        assert_eq!(calls, 0);
        assert!(matches!(
            cache.get(&op.shape_class()),
            Some((_, PlanOrigin::Tuned { .. }))
        ));
        // Saving again keeps the entry (merged with the file).
        cache.save().unwrap();
        let file = read_plan_file(&path, "NVIDIA H200 (test)", &h200()).unwrap();
        assert_eq!(file.plans.len(), 1);
        assert_eq!(file.plans[0].variant, PlannedVariant::Gemm(tuned));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_or_corrupt_files_are_ignored() {
        let dir = temp_dir("stale");
        let path = dir.join("plans.json");
        let op = Fp8Gemm::new(64, 2112, 512);
        let stored = |format: u32, device: &str, arch: &str, variant: GemmVariant| PlanFile {
            format,
            device: device.into(),
            arch: arch.into(),
            plans: vec![StoredPlan {
                shape: op.shape_class(),
                variant: PlannedVariant::Gemm(variant),
                ms: 0.5,
            }],
        };
        let heuristic = {
            let c = PlanCache::new("gpu", h200(), false, None);
            c.plan(&op, &mut |_: &[GemmVariant]| Ok(vec![])).unwrap()
        };
        let other = GemmVariant::MmaSync(MmaSyncGemm::LARGE_DEEP);
        assert_ne!(other, heuristic);
        let cases: Vec<(&str, Option<PlanFile>, &str)> = vec![
            (
                "other version",
                Some(stored(PLAN_FORMAT_VERSION + 1, "gpu", "sm_90a", other)),
                "",
            ),
            (
                "other device",
                Some(stored(PLAN_FORMAT_VERSION, "gpu 2", "sm_90a", other)),
                "",
            ),
            (
                "other arch",
                Some(stored(PLAN_FORMAT_VERSION, "gpu", "sm_80", other)),
                "",
            ),
            (
                "corrupt",
                None,
                "{\"format\": 1, \"device\": \"gpu\", \"plans\": [tru",
            ),
            ("not json", None, "\u{0}\u{1}garbage"),
        ];
        for (what, file, text) in cases {
            match file {
                Some(f) => write_plan_file(&path, &f).unwrap(),
                None => std::fs::write(&path, text).unwrap(),
            }
            let cache = PlanCache::new("gpu", h200(), false, Some(path.clone()));
            assert!(cache.get(&op.shape_class()).is_none(), "{what}");
            let v = cache
                .plan(&op, &mut |_: &[GemmVariant]| Ok(vec![]))
                .unwrap();
            assert_eq!(v, heuristic, "{what}");
        }
        // A stored variant that is no longer a candidate (here: too much shared memory for
        // sm_89) falls back to the heuristic.
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        write_plan_file(&path, &stored(PLAN_FORMAT_VERSION, "gpu", "sm_89", other)).unwrap();
        let cache = PlanCache::new("gpu", l4.clone(), false, Some(path.clone()));
        assert!(cache.get(&op.shape_class()).is_some());
        let v = cache
            .plan(&op, &mut |_: &[GemmVariant]| Ok(vec![]))
            .unwrap();
        assert_ne!(v, other);
        v.valid_on(&l4).unwrap();
        // A missing file is no error either.
        let cache = PlanCache::new("gpu", h200(), false, Some(dir.join("absent.json")));
        assert!(cache.get(&op.shape_class()).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pinning_a_candidate() {
        let cache = PlanCache::new("gpu", h200(), true, None);
        let op = Fp8Gemm::new(64, 2112, 512);
        let c = op.candidates(&h200()).unwrap();
        let mut calls = 0;
        for v in &c {
            cache.pin(&op, *v).unwrap();
            assert_eq!(cache.plan(&op, &mut timer(0, &mut calls)).unwrap(), *v);
            assert_eq!(cache.get(&op.shape_class()).unwrap().1, PlanOrigin::Pinned);
        }
        assert_eq!(calls, 0, "a pinned plan is not tuned");
        let l4 = ArchSpec::from_compute_capability(8, 9, 58).unwrap();
        let on_l4 = PlanCache::new("gpu", l4, false, None);
        assert!(on_l4
            .pin(&op, GemmVariant::MmaSync(MmaSyncGemm::LARGE_DEEP))
            .is_err());
    }

    #[test]
    fn a_timer_error_or_a_wrong_count_is_an_error() {
        let cache = PlanCache::new("gpu", h200(), true, None);
        let op = Fp8Gemm::new(64, 2112, 512);
        assert!(cache
            .plan(&op, &mut |_: &[GemmVariant]| Ok(vec![1.0]))
            .is_err());
        assert!(cache
            .plan(&op, &mut |_: &[GemmVariant]| Err(Error::Device {
                backend: BackendKind::Cuda,
                message: "x".into()
            }))
            .is_err());
        assert!(cache.get(&op.shape_class()).is_none());
        let all_nan = |c: &[GemmVariant]| Ok(vec![f64::NAN; c.len()]);
        assert!(cache.tune(&op, &mut { all_nan }).is_err());
    }
}
