//! Tests of the radial block-mask generator: published anchors, a token-level reference
//! transcription of the rule, and structural properties.

use proptest::prelude::*;
use tessera_core::radial::{
    band_radius, bitlen, build_radial_mask, frame_pair_pattern, is_decimated, nlogn_reference,
    video_block_count, window_width, FramePairPattern,
};
use tessera_core::{BlockMask, RadialMaskConfig};

fn config(
    frames: usize,
    tokens_per_frame: usize,
    extra_tokens: usize,
    block_size: usize,
    decay: f64,
    sink: bool,
) -> RadialMaskConfig {
    RadialMaskConfig {
        frames,
        tokens_per_frame,
        extra_tokens,
        block_size,
        decay,
        sink,
    }
}

fn hunyuan() -> RadialMaskConfig {
    config(30, 3840, 0, 128, 0.95, false)
}

fn wan() -> RadialMaskConfig {
    config(18, 3840, 0, 128, 0.2, true)
}

/// The token-level transcription of the rule (FACTS.md §1 with Tessera's extensions: grid
/// rounded up, every block a frame touches reduced, diagonal forced on), written independently
/// of the generator: it materialises every frame pair's `T x T` token mask, lays it on a padded
/// grid and counts each column of each block. Returns the row-major block bitmap.
fn token_level_mask(c: &RadialMaskConfig) -> Vec<bool> {
    let (frames, t, b) = (c.frames, c.tokens_per_frame, c.block_size);
    let nb = c.tokens().div_ceil(b);
    let border = c.video_tokens() / b;
    let mut grid = vec![false; nb * nb];
    for i in 0..frames {
        for j in 0..frames {
            let d = i.abs_diff(j);
            // The pair's T x T token mask.
            let ones: Vec<bool> = if c.sink && j == 0 {
                vec![true; t * t]
            } else {
                let pow2 = |n: usize| 2f64.powi(bitlen(n) as i32);
                let lambda = pow2(t) / pow2(d);
                let width = if d <= 1 {
                    t as f64
                } else {
                    (lambda * c.decay).max(b as f64)
                };
                let kept = lambda >= 128.0 || d % ((128.0 / lambda) as usize) == 0;
                (0..t * t)
                    .map(|x| kept && ((x / t).abs_diff(x % t) as f32) <= width as f32)
                    .collect()
            };
            // Lay it on a zero grid covering every block the two frames touch.
            let (rho, gamma) = ((i * t) % b, (j * t) % b);
            let (row_blocks, col_blocks) = ((rho + t).div_ceil(b), (gamma + t).div_ceil(b));
            let (h, w) = (row_blocks * b, col_blocks * b);
            let mut padded = vec![false; h * w];
            for r in 0..t {
                for col in 0..t {
                    padded[(rho + r) * w + gamma + col] = ones[r * t + col];
                }
            }
            // Strict shrink, OR into the global grid.
            for a in 0..row_blocks {
                for bb in 0..col_blocks {
                    let (mut nz, mut hi) = (0, 0);
                    for col in bb * b..(bb + 1) * b {
                        let n = (a * b..(a + 1) * b)
                            .filter(|&r| padded[r * w + col])
                            .count();
                        nz += usize::from(n > 0);
                        hi += usize::from(3 * n > b);
                    }
                    let (gr, gc) = ((i * t) / b + a, (j * t) / b + bb);
                    if 5 * hi > 3 * nz && gr < nb && gc < nb {
                        grid[gr * nb + gc] = true;
                    }
                }
            }
        }
    }
    for r in 0..nb {
        grid[r * nb + r] = true;
        for col in 0..nb {
            if r >= border || col >= border {
                grid[r * nb + col] = true;
            }
        }
    }
    grid
}

/// How many of frame `frame`'s tokens fall in block `index` (along either axis).
fn frame_tokens_in_block(c: &RadialMaskConfig, frame: usize, index: usize) -> usize {
    let (t, b) = (c.tokens_per_frame, c.block_size);
    let (start, end) = (frame * t, (frame + 1) * t);
    end.min((index + 1) * b)
        .saturating_sub(start.max(index * b))
}

fn build(c: &RadialMaskConfig) -> BlockMask {
    build_radial_mask(c).expect("valid configuration")
}

/// Random configurations of up to `max_frames` frames of up to `max_tokens` tokens: any token
/// counts (whole blocks per frame in a quarter of the cases), extra tokens, both block sizes,
/// sink on and off, decays on both sides of the window floor.
fn random_config(max_frames: usize, max_tokens: usize) -> impl Strategy<Value = RadialMaskConfig> {
    let block = prop_oneof![Just(64usize), Just(128)];
    (
        block,
        1..=max_frames,
        0usize..=4,
        1..=max_tokens,
        0usize..=200,
        0.05f64..4.0,
        any::<bool>(),
    )
        .prop_map(
            |(block_size, frames, whole_blocks, tokens, extra, decay, sink)| {
                let tokens_per_frame = if whole_blocks > 0 && tokens % 4 == 0 {
                    whole_blocks * block_size
                } else {
                    tokens
                };
                let extra_tokens = if extra % 3 == 0 { 0 } else { extra };
                config(
                    frames,
                    tokens_per_frame,
                    extra_tokens,
                    block_size,
                    decay,
                    sink,
                )
            },
        )
}

/// Shapes small enough for the token-level reference.
fn small_config() -> impl Strategy<Value = RadialMaskConfig> {
    random_config(8, 300)
}

/// Shapes with enough frames for decimation to matter at most token counts.
fn medium_config() -> impl Strategy<Value = RadialMaskConfig> {
    random_config(40, 1100)
}

#[test]
fn published_densities_are_reproduced() {
    // HunyuanVideo 117 frames at 768x1280 (no sink) and Wan2.1 69 frames (sink): the block counts
    // of the published generator, 0.274632 and 0.287133 of the grid.
    for (c, nnz, density) in [
        (hunyuan(), 222_452, "0.274632"),
        (wan(), 83_728, "0.287133"),
    ] {
        let mask = build(&c);
        assert_eq!(mask.tokens(), c.tokens());
        assert_eq!(mask.num_blocks(), c.tokens() / 128);
        assert_eq!(mask.nnz(), nnz, "{c:?}");
        assert_eq!(format!("{:.6}", mask.density()), density, "{c:?}");
    }
}

#[test]
fn helpers_follow_the_published_arithmetic() {
    assert_eq!([0, 1, 2, 5, 3840, 4096].map(bitlen), [0, 1, 2, 3, 12, 13]);
    // T = 3840: λ = 4096 / 2^bitlen(d); width max(λ·δ, B), T for d <= 1.
    assert_eq!(window_width(3840, 0, 0.95, 128), 3840.0);
    assert_eq!(window_width(3840, 1, 0.95, 128), 3840.0);
    assert_eq!(window_width(3840, 2, 0.95, 128), 1024.0 * 0.95);
    assert_eq!(window_width(3840, 17, 0.95, 128), 128.0);
    assert_eq!(window_width(3840, 7, 0.2, 128), 128.0);
    assert_eq!(window_width(3840, 7, 0.2, 64), 102.4);
    // Decimation starts at λ < 128, i.e. bitlen(d) >= 6 for T = 3840: d = 32..63 keep even d.
    assert!((0..32).all(|d| !is_decimated(3840, d)));
    assert!(!is_decimated(3840, 32) && is_decimated(3840, 33));
    assert!(!is_decimated(3840, 64) && is_decimated(3840, 66) && !is_decimated(3840, 68));
    // T < 128: adjacent frames are decimated too, distance 0 never.
    assert!(!is_decimated(100, 0) && is_decimated(100, 1) && is_decimated(1, 1 << 40));
    assert!(!is_decimated(128, 1) && !is_decimated(128, 2) && is_decimated(128, 3));
    // The published comparison is in f32: a width a hair below an integer counts as it.
    assert_eq!(band_radius(972.8), 972);
    assert_eq!(band_radius(100.0 - 1e-7), 100);
    assert_eq!(band_radius(f64::MAX), usize::MAX);
    let c = config(8, 3840, 0, 128, 0.95, true);
    assert_eq!(frame_pair_pattern(&c, 5, 0), FramePairPattern::Full);
    assert_eq!(frame_pair_pattern(&c, 5, 4), FramePairPattern::Full);
    assert_eq!(
        frame_pair_pattern(&c, 1, 4),
        FramePairPattern::Band { radius: 972 }
    );
    assert_eq!(
        frame_pair_pattern(&config(40, 200, 0, 64, 1.0, false), 0, 3),
        FramePairPattern::Empty
    );
}

#[test]
fn invalid_configurations_are_rejected() {
    let ok = config(4, 100, 10, 64, 0.5, false);
    assert!(build_radial_mask(&ok).is_ok());
    for (bad, arg) in [
        (
            RadialMaskConfig {
                block_size: 96,
                ..ok.clone()
            },
            "block_size",
        ),
        (
            RadialMaskConfig {
                decay: 0.0,
                ..ok.clone()
            },
            "decay",
        ),
        (
            RadialMaskConfig {
                decay: f64::NAN,
                ..ok.clone()
            },
            "decay",
        ),
        (
            RadialMaskConfig {
                frames: 0,
                ..ok.clone()
            },
            "frames",
        ),
        (
            RadialMaskConfig {
                tokens_per_frame: 0,
                ..ok.clone()
            },
            "tokens_per_frame",
        ),
    ] {
        let e = build_radial_mask(&bad).unwrap_err();
        assert_eq!(e.argument(), Some(arg), "{e}");
    }
    // A grid whose dense text part alone overflows the u32 BSR indices is refused up front.
    let huge = config(1, 64, 1 << 30, 64, 1.0, false);
    assert!(build_radial_mask(&huge).is_err());
}

#[test]
fn partial_last_block_and_extra_tokens_are_dense() {
    // V = 3 x 100 = 300 (border 4 at B = 64), S = 345: blocks 4 and 5 hold the video tail and
    // the extra tokens; 6 blocks per side, the last one partial.
    let c = config(3, 100, 45, 64, 0.5, false);
    let mask = build(&c);
    assert_eq!((mask.num_blocks(), mask.tokens()), (6, 345));
    for r in 0..6 {
        for col in 0..6 {
            if r >= 4 || col >= 4 {
                assert!(mask.contains(r, col), "({r}, {col})");
            }
        }
    }
}

#[test]
fn sink_frame_is_attended_by_every_query() {
    let c = config(12, 512, 0, 128, 0.3, true);
    let mask = build(&c);
    for r in 0..mask.num_blocks() {
        assert!((0..4).all(|col| mask.contains(r, col)), "block row {r}");
    }
    // Without the sink, far frames do not see frame 0 in full.
    let no_sink = build(&RadialMaskConfig { sink: false, ..c });
    assert!(!(0..4).all(|col| no_sink.contains(40, col)));
}

#[test]
fn frames_straddling_one_more_block_keep_all_their_tokens() {
    // T = 120, B = 64: frame 1 (tokens 120..240) starts 56 rows into block 1 and spans blocks
    // 1..=3, one more than ceil(T / B) = 2. The published generator keeps only 2 and so drops
    // frame 1's 48 rows in block 3, which no other pair can turn on (frame 2 has only 16 rows
    // there): its block row 3 is empty. Here it holds frame 1's own blocks 1, 2 and 3.
    let c = config(3, 120, 0, 64, 1.0, false);
    let mask = build(&c);
    assert_eq!(mask.row(3), &[1, 2, 3, 5]);
    assert_eq!(mask.to_dense_bitmap(), token_level_mask(&c));
}

#[test]
fn mask_grows_as_n_log_n_in_frames() {
    // With K = T / B blocks per frame, the video block count stays within
    // C · F·K²·(1 + log2 F) (= C · nlogn_reference) for F up to 64, and each doubling of F adds
    // at most D·K blocks to the average video block row: the increments level off instead of
    // doubling as a quadratic mask's would. Measured worst cases: ratio 2.82 (T = 512, B = 128,
    // δ = 0.5, sink, F = 64) and increment 5.3·K (T = 1024, B = 128, δ = 0.1, F = 64 -> 128).
    // The density falls as frames are added.
    const C: f64 = 3.0;
    const D: f64 = 6.0;
    for (tokens_per_frame, block_size, decay, sink) in [
        (3840, 128, 0.95, false),
        (3840, 128, 0.2, true),
        (1024, 64, 1.0, false),
        (512, 128, 0.5, true),
        (1024, 128, 0.1, false),
    ] {
        let k = (tokens_per_frame / block_size) as f64;
        let blocks_per_row = |frames: usize| {
            let c = config(frames, tokens_per_frame, 0, block_size, decay, sink);
            let mask = build(&c);
            let video = video_block_count(&mask, &c) as f64;
            (
                video / nlogn_reference(&c),
                video / (frames as f64 * k),
                mask.density(),
            )
        };
        let mut last_density = f64::INFINITY;
        for frames in 1..=64 {
            let (ratio, _, density) = blocks_per_row(frames);
            assert!(
                ratio <= C,
                "F = {frames}, T = {tokens_per_frame}: ratio {ratio}"
            );
            assert!(
                density <= last_density,
                "F = {frames}, T = {tokens_per_frame}: {density}"
            );
            last_density = density;
        }
        let mut last_per_row = k;
        for frames in [2, 4, 8, 16, 32, 64, 128] {
            let (_, per_row, _) = blocks_per_row(frames);
            let added = per_row - last_per_row;
            assert!(
                added <= D * k,
                "F = {frames}, T = {tokens_per_frame}: +{added} per row"
            );
            last_per_row = per_row;
        }
        assert!(last_density < 0.4, "{last_density}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn fast_generator_matches_token_level_reference(c in small_config()) {
        let mask = build(&c);
        prop_assert_eq!(mask.tokens(), c.tokens());
        prop_assert_eq!(mask.num_blocks(), c.tokens().div_ceil(c.block_size));
        prop_assert_eq!(mask.to_dense_bitmap(), token_level_mask(&c), "{:?}", c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_block_row_has_a_block(c in medium_config()) {
        let mask = build(&c);
        for r in 0..mask.num_blocks() {
            prop_assert!(!mask.row(r).is_empty(), "block row {} of {:?}", r, c);
        }
    }

    #[test]
    fn diagonal_frame_pairs_are_dense(c in medium_config()) {
        // Within a frame's own blocks, every block row the frame fills more than a third of is
        // fully on (strict shrink needs that), and the diagonal always is. With whole blocks
        // per frame that is every block of the frame's K x K square.
        let mask = build(&c);
        let b = c.block_size;
        for frame in 0..c.frames {
            let first = frame * c.tokens_per_frame / b;
            let last = ((frame + 1) * c.tokens_per_frame - 1) / b;
            for r in first..=last {
                prop_assert!(mask.contains(r, r));
                if 3 * frame_tokens_in_block(&c, frame, r) > b {
                    for col in first..=last {
                        prop_assert!(mask.contains(r, col), "({}, {}) of frame {} in {:?}", r, col, frame, c);
                    }
                }
            }
        }
        if c.tokens_per_frame % b == 0 {
            let k = c.tokens_per_frame / b;
            for frame in 0..c.frames {
                for r in frame * k..(frame + 1) * k {
                    prop_assert!((frame * k..(frame + 1) * k).all(|col| mask.contains(r, col)));
                }
            }
        }
    }

    #[test]
    fn mask_is_symmetric_with_whole_blocks_per_frame(c in medium_config(), whole_blocks in 1usize..=3) {
        // The band and decimation depend on |i - j| only; the sink breaks the symmetry.
        let c = RadialMaskConfig { tokens_per_frame: whole_blocks * c.block_size, sink: false, ..c };
        let mask = build(&c);
        let nb = mask.num_blocks();
        for r in 0..nb {
            for col in 0..r {
                prop_assert_eq!(mask.contains(r, col), mask.contains(col, r), "({}, {}) in {:?}", r, col, c);
            }
        }
    }

    #[test]
    fn smaller_decay_never_adds_blocks(c in medium_config(), shrink in 0.05f64..1.0) {
        // Narrower windows keep a subset of the blocks (so the density never increases).
        let wide = build(&c);
        let narrow = build(&RadialMaskConfig { decay: c.decay * shrink, ..c.clone() });
        for r in 0..wide.num_blocks() {
            for &col in narrow.row(r) {
                prop_assert!(wide.contains(r, col as usize), "({}, {}) in {:?} x {}", r, col, c, shrink);
            }
        }
        prop_assert!(narrow.density() <= wide.density());
    }
}
