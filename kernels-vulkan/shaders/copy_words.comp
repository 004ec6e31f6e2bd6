// A buffer copy by a compute shader: dst[i] = src[i] for 16-byte words i < words, each
// invocation striding over the whole range (grid-stride loop), so that any number of workgroups
// covers any size. Used as the Vulkan benchmark's copy ceiling (what shaders can stream), and
// available through the device API as `record_copy_words`.
//   src, dst   [words] uvec4
//
// Specialization constants: 0 = workgroup size.
#version 450

layout(local_size_x = 256, local_size_x_id = 0) in;

layout(set = 0, binding = 0, std430) readonly buffer Src { uvec4 src[]; };
layout(set = 0, binding = 1, std430) writeonly buffer Dst { uvec4 dst[]; };

layout(push_constant, std430) uniform Params {
    uint words;    // 16-byte words to copy
    uint stride;   // invocations in the whole dispatch
} p;

void main() {
    uint first = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x
        + gl_LocalInvocationID.x;
    for (uint i = first; i < p.words; i += p.stride) {
        dst[i] = src[i];
    }
}
