//! The radial mask builder and the BSR constructor with fuzzed parameters: a typed error or a
//! mask that satisfies the kernels' contract (sorted in-range columns, every diagonal block on),
//! never a panic. Configurations of more than 2^16 tokens are validated but not built (their
//! masks are legitimately large).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::{BlockMask, Error, RadialMaskConfig};

#[path = "input.rs"]
mod input;
use input::Input;

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let config = RadialMaskConfig {
        frames: i.size(),
        tokens_per_frame: i.size().saturating_mul(if i.bool() { 64 } else { 1 }),
        extra_tokens: i.size(),
        block_size: match i.size() % 4 {
            0 => 64,
            1 => 128,
            _ => i.size(),
        },
        decay: i.f64(),
        sink: i.bool(),
    };
    let _ = (config.tokens(), config.video_tokens());
    match config.validate() {
        Err(e) => {
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
            assert!(config.build().is_err());
        }
        Ok(()) if config.tokens() <= 1 << 16 && config.frames <= 512 => match config.build() {
            Ok(mask) => {
                assert_eq!(mask.tokens(), config.tokens());
                for r in 0..mask.num_blocks() {
                    let row = mask.row(r);
                    assert!(row.windows(2).all(|w| w[0] < w[1]));
                    assert!(mask.contains(r, r));
                }
            }
            Err(e) => assert!(matches!(
                e,
                Error::InvalidArgument { .. } | Error::OutOfMemory { .. }
            )),
        },
        Ok(()) => {}
    }
    // The BSR constructor on arbitrary arrays.
    let indptr = i.list(|i| i.size() as u32);
    let indices = i.list(|i| i.size() as u32);
    if let Err(e) = BlockMask::from_bsr(i.size(), i.size(), indptr, indices) {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    }
});
