#!/usr/bin/env python3
"""Checks the pure helpers of ci/peers.py on any machine, torch or not (without torch, empty
stand-in modules let the file import; nothing here calls torch): the attention keys, FLOP and
bytes follow the bench's (bench/src/cases.rs, SparseAttention in core), and read_radial_mask
takes the mask JSON that `tessera bench --masks` writes and names what is wrong in a bad one; the
Tessera (python) rows use the same shape keys, a shuffled block table of every page once, and are
skipped (saying `skipped:`) without the `tessera` package or its CUDA backend.

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

    # The Tessera (python) rows share the peers' and the bench's shape keys; the radial
    # attention row says radial (the report compares such a peer with our radial row), the
    # dense one does not (compared with our dense row).
    assert "radial" in peers.TESSERA_PY_ATTENTION and peers.TESSERA_PY_ATTENTION.startswith(peers.TESSERA_PY)
    assert "radial" not in peers.TESSERA_PY_ATTENTION_DENSE
    assert peers.TESSERA_PY_ATTENTION_DENSE.startswith(peers.TESSERA_PY)
    assert peers.gemm_key(64, 2112, 7168) == "M64 N2112 K7168"
    assert peers.mla_key(128, 8192, 16, 1) == "b128 sk8192 hq16 sq1 bf16"
    checks += 5

    # The MLA block table: batch rows of ceil(s_k / 64) pages, every page once, shuffled, the
    # same on every run.
    table = peers.mla_block_table(3, 100)
    assert [len(r) for r in table] == [2, 2, 2]
    assert sorted(p for r in table for p in r) == list(range(6))
    assert peers.mla_block_table(3, 100) == table
    big = peers.mla_block_table(64, 4096)
    assert sorted(p for r in big for p in r) == list(range(64 * 64)) and big[0] != list(range(64))
    checks += 4

    # Without the package, or without its CUDA backend, the rows are skipped and say so (a
    # `skipped:` line, which ci/gpu-bench.sh fails on); with it, the module is used.
    saved = sys.modules.get("tessera")
    try:
        sys.modules["tessera"] = None  # import tessera raises ImportError
        mod, why = peers.import_tessera()
        assert mod is None and "does not import" in why, why
        line = peers.skipped_line("fp8_gemm", why)
        assert line.startswith("skipped: tessera (python) fp8_gemm rows: "), line

        def stand_in(cuda):
            m = types.ModuleType("tessera")
            m.__version__ = "0.0.0"
            m.info = lambda: {"version": "0.0.0", "backends": [{"name": "cpu", "usable": True, "reason": None}] + cuda}
            return m

        sys.modules["tessera"] = stand_in([{"name": "cuda", "usable": False, "reason": "no CUDA driver"}])
        mod, why = peers.import_tessera()
        assert mod is None and "CUDA backend is not usable: no CUDA driver" in why, why
        sys.modules["tessera"] = stand_in([])
        mod, why = peers.import_tessera()
        assert mod is None and "not compiled in" in why, why
        sys.modules["tessera"] = stand_in([{"name": "cuda", "usable": True, "reason": None}])
        mod, why = peers.import_tessera()
        assert mod is sys.modules["tessera"] and why is None, why
        checks += 5
    finally:
        if saved is None:
            sys.modules.pop("tessera", None)
        else:
            sys.modules["tessera"] = saved

    print(f"ci/peers.py helpers: all {checks} checks hold")


if __name__ == "__main__":
    main()
