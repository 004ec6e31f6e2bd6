//! The radial mask generator (FACTS.md §1).

use crate::error::Result;
use crate::mask::{BlockMask, RadialMaskConfig};

/// Builds the radial block mask for `config`.
pub fn build_radial_mask(config: &RadialMaskConfig) -> Result<BlockMask> {
    config.validate()?;
    todo!("radial mask generator")
}
