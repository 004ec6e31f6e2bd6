#!/usr/bin/env bash
# Sourced by the GPU scripts (gpu-run.sh, gpu-bench.sh, gpu-sanitize.sh) with `pack` set to the
# pack folder: unpacks bin.tar.xz (written by ci/gpu-pack.sh) into pack/bin once, when bin/ is not
# there yet. Python's tarfile does it where xz is not installed.
if [ ! -d "$pack/bin" ] && [ -f "$pack/bin.tar.xz" ]; then
  if command -v xz > /dev/null; then
    tar -C "$pack" -xJf "$pack/bin.tar.xz"
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
      "$pack/bin.tar.xz" "$pack"
  fi
fi
if [ ! -d "$pack/bin" ]; then
  echo "error: $pack has neither bin/ nor bin.tar.xz (run ci/gpu-pack.sh)" >&2
  exit 1
fi
