// A GPU busy-wait for benchmarks: one thread holds the stream for `ns` nanoseconds of the global
// timer, so that a host queueing timed launches behind it runs ahead of the GPU (the events around
// each launch then measure the GPU's work, not the host's dispatch).
//
// Compile-time constants: TESSERA_SMEM_BYTES 0, TESSERA_THREADS 32 (one warp; lane 0 waits).
static_assert(TESSERA_SMEM_BYTES == 0, "gpu_sleep uses no dynamic shared memory");
static_assert(TESSERA_THREADS == 32, "gpu_sleep runs one warp");

extern "C" __global__ void gpu_sleep(unsigned long long ns) {
    if (threadIdx.x != 0) return;
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
