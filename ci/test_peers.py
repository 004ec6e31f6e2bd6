#!/usr/bin/env python3
"""Checks the pure helpers of ci/peers.py on any machine, torch or not (without torch, empty
stand-in modules let the file import; nothing here calls torch): the attention keys, FLOP and
bytes follow the bench's (bench/src/cases.rs, SparseAttention in core), and read_radial_mask
takes the mask JSON that `tessera bench --masks` writes and names what is wrong in a bad one.

  python3 ci/test_peers.py
"""

import importlib.util
import json
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def load_peers():
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = types.ModuleType("torch")
        torch.float8_e4m3fn = None
        torch.nn = types.ModuleType("torch.nn")
        torch.nn.functional = types.ModuleType("torch.nn.functional")
        sys.modules.update({"torch": torch, "torch.nn": torch.nn, "torch.nn.functional": torch.nn.functional})
    spec = importlib.util.spec_from_file_location("peers", os.path.join(HERE, "peers.py"))
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers


def expect_error(fn, fragment):
    try:
        fn()
    except RuntimeError as e:
        assert fragment in str(e), f"{fragment!r} not in {e}"
        return
    raise AssertionError(f"no error containing {fragment!r}")


def main():
    peers = load_peers()
    checks = 0

    # Keys as AttentionCase::key: "{model} F{frames} T3840 h{heads}".
    assert peers.attention_key("hunyuan", 120) == "hunyuan F120 T3840 h24"
    assert peers.attention_key("wan", 72) == "wan F72 T3840 h40"
    checks += 2

    # SparseAttention::flops = 4 x heads x nnz x 128 x 128 x head_dim; dense = every block on;
    # backward_flops = 2.5 x flops.
    tokens = 30 * 3840
    blocks = tokens // 128
    assert peers.attention_flops(24, tokens, nnz=1000) == 4.0 * 24 * 1000 * 128 * 128 * 128
    assert peers.attention_flops(24, tokens) == peers.attention_flops(24, tokens, nnz=blocks * blocks)
    assert peers.attention_flops(24, tokens, nnz=1000, backward=True) == 2.5 * peers.attention_flops(24, tokens, nnz=1000)
    assert peers.attention_flops(24, tokens, backward=True) == 2.5 * peers.attention_flops(24, tokens)
    checks += 4

    # Bytes: q, k, v, o (forward, 4 x 2 x qkv elements); backward 8 tensors.
    assert peers.attention_bytes(24, tokens) == 4 * 2 * tokens * 24 * 128
    assert peers.attention_bytes(24, tokens, backward=True) == 8 * 2 * tokens * 24 * 128
    checks += 2

    with tempfile.TemporaryDirectory() as d:
        # A 3-block mask in the bench's --masks format (bench/src/run.rs).
        good = {"tokens": 384, "block_size": 128, "blocks": 3, "nnz": 5, "density": 5 / 9,
                "indptr": [0, 2, 3, 5], "indices": [0, 1, 1, 0, 2]}

        def write(mask):
            with open(os.path.join(d, "wan_F1.json"), "w") as f:
                json.dump(mask, f)

        write(good)
        assert peers.read_radial_mask(d, "wan", 1, 384)["nnz"] == 5
        expect_error(lambda: peers.read_radial_mask(d, "wan", 2, 384), "wan_F2.json missing")
        expect_error(lambda: peers.read_radial_mask(None, "wan", 1, 384), "missing")
        expect_error(lambda: peers.read_radial_mask(d, "wan", 1, 512), "expected 512, 128")
        write(dict(good, indices=[0, 1, 1, 0, 3]))
        expect_error(lambda: peers.read_radial_mask(d, "wan", 1, 384), "indices out of range")
        write(dict(good, nnz=4))
        expect_error(lambda: peers.read_radial_mask(d, "wan", 1, 384), "nnz 4")
        write(dict(good, indptr=[0, 3, 2, 5]))
        expect_error(lambda: peers.read_radial_mask(d, "wan", 1, 384), "indptr decreases")
        write(dict(good, indptr=[0, 2, 5]))
        expect_error(lambda: peers.read_radial_mask(d, "wan", 1, 384), "for 3 blocks")
        checks += 8

    print(f"ci/peers.py helpers: all {checks} checks hold")


if __name__ == "__main__":
    main()
