//! `Buffer::write` and `Buffer::read` on both memory locations: through the mapping
//! (host-visible) and through a staging buffer and a queue copy (device-local), at odd offsets
//! and lengths, with out-of-range accesses refused without touching the buffer.

use tessera_core::Error;
use tessera_vulkan::{Buffer, MemoryLocation, DEVICE_LOCAL_MIN_BYTES};

mod common;
use common::backend;

#[test]
fn write_then_read_round_trips_in_both_locations() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    for location in [MemoryLocation::HostVisible, MemoryLocation::DeviceLocal] {
        let size = 4099u64;
        let mut buf = Buffer::new(ctx, size, location).unwrap();
        assert_eq!(buf.location(), location);
        let base: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        buf.write(0, &base).unwrap();
        assert_eq!(buf.read(0, size as usize).unwrap(), base, "{location:?}");
        // An odd patch at an odd offset, then odd sub-ranges read back.
        let patch: Vec<u8> = (0..333u32).map(|i| (255 - i % 256) as u8).collect();
        buf.write(1001, &patch).unwrap();
        let mut expected = base.clone();
        expected[1001..1001 + patch.len()].copy_from_slice(&patch);
        assert_eq!(
            buf.read(0, size as usize).unwrap(),
            expected,
            "{location:?}"
        );
        assert_eq!(
            buf.read(999, 7).unwrap(),
            expected[999..1006].to_vec(),
            "{location:?}"
        );
        assert!(buf.read(size, 0).unwrap().is_empty());
        // Out of range: an error naming the sizes, and the contents untouched.
        for (offset, len) in [(size - 3, 4usize), (size + 1, 1), (u64::MAX, 2)] {
            let e = buf.write(offset, &vec![0u8; len]).unwrap_err();
            assert!(
                matches!(&e, Error::Device { message, .. } if message.contains("do not fit")),
                "{e}"
            );
            assert!(buf.read(offset, len).is_err());
        }
        assert_eq!(
            buf.read(0, size as usize).unwrap(),
            expected,
            "{location:?}"
        );
    }
}

#[test]
fn host_api_buffers_are_device_local_when_large_on_discrete_gpus_only() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    let discrete = backend.features().device_type == "Discrete";
    let large = if discrete {
        MemoryLocation::DeviceLocal
    } else {
        MemoryLocation::HostVisible
    };
    // Small: host-visible everywhere, padded to whole words with zeros.
    let buf = Buffer::from_bytes(ctx, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(buf.location(), MemoryLocation::HostVisible);
    assert_eq!(buf.size(), 8);
    assert_eq!(buf.read(0, 8).unwrap(), vec![1, 2, 3, 4, 5, 0, 0, 0]);
    let filled = Buffer::filled(ctx, 6, &[0xAB, 0xCD]).unwrap();
    assert_eq!(
        filled.read(0, 8).unwrap(),
        vec![0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD]
    );
    // Large: device-local on a discrete GPU, uploaded and read back through staging.
    let n = DEVICE_LOCAL_MIN_BYTES as usize + 6;
    let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
    let big = Buffer::from_bytes(ctx, &data).unwrap();
    assert_eq!(big.location(), large);
    assert_eq!(MemoryLocation::for_host_api(ctx, n as u64), large);
    assert_eq!(
        MemoryLocation::for_host_api(ctx, 1024),
        MemoryLocation::HostVisible
    );
    let back = big.read(0, big.size() as usize).unwrap();
    assert_eq!(&back[..n], &data[..]);
    assert!(back[n..].iter().all(|&b| b == 0));
    println!(
        "{}: host API buffers of {n} bytes are {large:?}",
        backend.features().name
    );
}

#[test]
fn shader_copy_copies_exactly_the_range_and_rejects_bad_sizes() {
    let Some(backend) = backend() else { return };
    let ctx = backend.context();
    // More 16-byte words than one pass of the grid covers on a small device is not needed to
    // exercise the stride: the copy is checked at several sizes and offsets.
    for (words, dst_offset) in [(1u64, 0u64), (255, 256), (4099, 0), (70_001, 1024)] {
        let bytes = 16 * words;
        let src_data: Vec<u8> = (0..bytes).map(|i| (i * 13 % 256) as u8).collect();
        let src = Buffer::from_bytes(ctx, &src_data).unwrap();
        let guard = 64u64;
        let dst = Buffer::filled(ctx, (dst_offset + bytes + guard) as usize, &[0xEE]).unwrap();
        backend
            .run_and_wait(|cmd| {
                // SAFETY: `cmd` is the backend's recording command buffer; both buffers are live
                // storage buffers of its device, kept until the wait returns.
                unsafe {
                    backend.record_copy_words(
                        cmd,
                        src.range(),
                        dst.slice(dst_offset, bytes + guard),
                        bytes,
                    )
                }
            })
            .unwrap();
        let out = dst.read(0, (dst_offset + bytes + guard) as usize).unwrap();
        assert!(out[..dst_offset as usize].iter().all(|&b| b == 0xEE));
        assert_eq!(
            &out[dst_offset as usize..(dst_offset + bytes) as usize],
            &src_data[..]
        );
        assert!(
            out[(dst_offset + bytes) as usize..]
                .iter()
                .all(|&b| b == 0xEE),
            "wrote past the range"
        );
    }
    let src = Buffer::filled(ctx, 64, &[1]).unwrap();
    let dst = Buffer::filled(ctx, 64, &[2]).unwrap();
    for (bytes, arg) in [(0u64, "bytes"), (24, "bytes"), (80, "src")] {
        let e = backend
            .run_and_wait(|cmd| {
                // SAFETY: as above; these calls are refused before recording anything.
                unsafe { backend.record_copy_words(cmd, src.range(), dst.range(), bytes) }
            })
            .unwrap_err();
        assert!(e.to_string().contains(arg), "{e}");
    }
    assert_eq!(dst.read(0, 64).unwrap(), vec![2; 64]);
}
