//! `tessera mask`: build a radial attention mask and report its blocks, density and how it
//! compares with dense attention and with the O(n log n) reference; optionally print it as JSON
//! or draw it.

use std::path::Path;
use std::process::ExitCode;

use plotters::prelude::*;
use tessera::radial::{nlogn_reference, video_block_count};
use tessera::{BlockMask, RadialMaskConfig};

/// Arguments of `tessera mask`.
#[derive(clap::Args, Debug)]
pub struct MaskArgs {
    /// Number of (latent) frames F.
    #[arg(long)]
    pub frames: usize,
    /// Tokens per frame T.
    #[arg(long)]
    pub tokens_per_frame: usize,
    /// Extra dense tokens E after the video (e.g. text).
    #[arg(long, default_value_t = 0)]
    pub extra_tokens: usize,
    /// Block size: 64 or 128.
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// Decay factor δ > 0.
    #[arg(long, default_value_t = 1.0)]
    pub decay: f64,
    /// Frame 0 is an attention sink.
    #[arg(long)]
    pub sink: bool,
    /// Print JSON `{"block_size", "blocks", "density", "indptr", "indices"}` instead of text.
    #[arg(long)]
    pub json: bool,
    /// Draw the block mask into this PNG file.
    #[arg(long, value_name = "FILE")]
    pub png: Option<std::path::PathBuf>,
}

impl MaskArgs {
    fn config(&self) -> RadialMaskConfig {
        RadialMaskConfig {
            frames: self.frames,
            tokens_per_frame: self.tokens_per_frame,
            extra_tokens: self.extra_tokens,
            block_size: self.block_size,
            decay: self.decay,
            sink: self.sink,
        }
    }
}

/// Runs `tessera mask`.
pub fn run(args: &MaskArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = args.config();
    let mask = config.build()?;
    let picture = match &args.png {
        Some(path) => Some(draw_png(&mask, path)?),
        None => None,
    };
    if args.json {
        println!("{}", serde_json::to_string(&MaskJson::new(&mask))?);
    } else {
        print_report(&config, &mask, picture.as_ref());
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--json` output: one object.
#[derive(serde::Serialize)]
struct MaskJson<'a> {
    /// Tokens covered (S).
    tokens: usize,
    block_size: usize,
    /// Blocks per side.
    blocks: usize,
    /// Blocks on.
    nnz: usize,
    density: f64,
    indptr: &'a [u32],
    indices: &'a [u32],
}

impl<'a> MaskJson<'a> {
    fn new(mask: &'a BlockMask) -> Self {
        Self {
            tokens: mask.tokens(),
            block_size: mask.block_size(),
            blocks: mask.num_blocks(),
            nnz: mask.nnz(),
            density: mask.density(),
            indptr: mask.indptr(),
            indices: mask.indices(),
        }
    }
}

/// A PNG written by `--png`.
struct Picture<'a> {
    path: &'a Path,
    side_px: u32,
    block_px: u32,
}

fn print_report(config: &RadialMaskConfig, mask: &BlockMask, picture: Option<&Picture>) {
    let blocks = mask.num_blocks();
    let video_side = config.video_tokens() / config.block_size;
    let video_dense = video_side * video_side;
    let video_on = video_block_count(mask, config);
    let reference = nlogn_reference(config);
    println!(
        "radial mask: {} frames x {} tokens + {} extra = {} tokens, block {}, decay {}, {}",
        config.frames,
        config.tokens_per_frame,
        config.extra_tokens,
        mask.tokens(),
        mask.block_size(),
        config.decay,
        if config.sink {
            "sink on frame 0"
        } else {
            "no sink"
        },
    );
    println!("blocks per side   {blocks} ({video_side} of them whole video blocks)");
    println!("blocks on         {} of {}", mask.nnz(), blocks * blocks);
    println!(
        "density           {:.6} (sparsity {:.2}%)",
        mask.density(),
        100.0 * (1.0 - mask.density())
    );
    println!("video x video part (the rest is dense):");
    println!("  dense           {video_dense:>12} blocks  O(n^2)");
    println!("  n log n ref.    {reference:>12.0} blocks  (V/B) x max(T/B, 1) x (1 + log2 F)");
    println!("  radial          {video_on:>12} blocks");
    if video_dense > 0 {
        println!(
            "  radial / dense  {:>12.4}",
            video_on as f64 / video_dense as f64
        );
        println!("  radial / ref.   {:>12.4}", video_on as f64 / reference);
    }
    if let Some(p) = picture {
        println!(
            "picture           {} ({} x {} px, {} px per block)",
            p.path.display(),
            p.side_px,
            p.side_px,
            p.block_px
        );
    }
}

/// Longest picture side aimed at: blocks get `TARGET_SIDE_PX / blocks` pixels each (at least 1).
const TARGET_SIDE_PX: usize = 1024;
/// Largest picture side drawn (one pixel per block beyond `TARGET_SIDE_PX` blocks).
const MAX_SIDE_PX: usize = 8192;

/// Draws the block bitmap: on blocks dark, off blocks white, one square of `block_px` pixels
/// per block.
fn draw_png<'a>(
    mask: &BlockMask,
    path: &'a Path,
) -> Result<Picture<'a>, Box<dyn std::error::Error>> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(format!("--png: {} must end in .png", path.display()).into());
    }
    let blocks = mask.num_blocks();
    if blocks > MAX_SIDE_PX {
        return Err(format!(
            "--png: {blocks} blocks per side is too many to draw one pixel per block \
             (at most {MAX_SIDE_PX})"
        )
        .into());
    }
    // Fail early with a plain I/O message (the bitmap backend reports it only when saving).
    std::fs::File::create(path)
        .map_err(|e| format!("--png: cannot write {}: {e}", path.display()))?;
    let block_px = (TARGET_SIDE_PX / blocks).max(1);
    let side_px = u32::try_from(blocks * block_px)?;
    let block_px = block_px as i32;
    let cannot_draw =
        |e: DrawingAreaErrorKind<_>| format!("--png: cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (side_px, side_px)).into_drawing_area();
    root.fill(&WHITE).map_err(cannot_draw)?;
    let dark = RGBColor(20, 20, 20).filled();
    for row in 0..blocks {
        let y = row as i32 * block_px;
        // One rectangle per run of consecutive on blocks.
        let columns = mask.row(row);
        let mut start = 0;
        while start < columns.len() {
            let mut end = start + 1;
            while end < columns.len() && columns[end] == columns[end - 1] + 1 {
                end += 1;
            }
            let (x0, x1) = (columns[start] as i32, columns[end - 1] as i32 + 1);
            // The bitmap backend fills [x0, x1) x [y0, y1).
            root.draw(&Rectangle::new(
                [(x0 * block_px, y), (x1 * block_px, y + block_px)],
                dark,
            ))
            .map_err(cannot_draw)?;
            start = end;
        }
    }
    root.present().map_err(cannot_draw)?;
    Ok(Picture {
        path,
        side_px,
        block_px: block_px as u32,
    })
}
