// Converts f32 values to bfloat16, FP8 E4M3 and FP8 E5M2 with the GLSL types of
// GL_EXT_bfloat16 and GL_EXT_float_e4m3 / GL_EXT_float_e5m2 (glslang >= 15.4): the proof that
// the shader toolchain (ci/install-glslang.sh) compiles them. Element i of `result` packs the
// three codes of `values[i]`: bf16 bits in 0..16, E4M3 in 16..24, E5M2 in 24..32 (conversions
// round to nearest even; E4M3 saturates to +-448, E5M2 to +-57344, as saturatedConvertEXT does).
// Not dispatched yet: running it needs a device with VK_KHR_shader_bfloat16 and
// VK_EXT_shader_float8 (lavapipe has neither) and their features enabled at device creation,
// with shaderFloat16, shaderInt8 and shaderInt16 (the SPIR-V declares those capabilities).
#version 450
#extension GL_EXT_bfloat16 : require
#extension GL_EXT_float_e4m3 : require
#extension GL_EXT_float_e5m2 : require
#extension GL_EXT_shader_explicit_arithmetic_types : require

layout(local_size_x = 64) in;

layout(set = 0, binding = 0, std430) readonly buffer Values { float values[]; };
layout(set = 0, binding = 1, std430) writeonly buffer Result { uint result[]; };

layout(push_constant, std430) uniform Params {
    uint count;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.count) {
        return;
    }
    float v = values[i];
    bfloat16_t b = bfloat16_t(v);
    floate4m3_t e4;
    saturatedConvertEXT(e4, v);
    floate5m2_t e5;
    saturatedConvertEXT(e5, v);
    result[i] = uint(bfloat16BitsToUintEXT(b)) | (uint(floate4m3BitsToUintEXT(e4)) << 16)
        | (uint(floate5m2BitsToUintEXT(e5)) << 24);
}
