//! `tessera mask`.

use std::process::ExitCode;

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

/// Runs `tessera mask`.
pub fn run(args: &MaskArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let _ = args;
    todo!()
}
