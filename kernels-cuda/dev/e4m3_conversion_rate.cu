// Throughput of e4m3 -> scaled bf16 conversions (dev tool, session 17): every SM runs W warps,
// each converting 4-code words from registers (8 independent chains a thread); prints the cycles
// per word per scheduler for each route:
//   0 the e4m3x2 -> f16x2 unpack alone; 1 unpack, f16 -> f32, x scale, cvt.rn.bf16x2.f32 (the
//   rounding route); 2 the same truncated to bf16 by prmt; 3 unpack, f16 bits moved into bf16
//   position, two mul.bf16x2; 4 bytes -> bf16 bits by integer operations, two mul.bf16x2; 5 route
//   1 without the multiply; 6 bytes sign-extended by prmt, shifted and masked into bf16 bits x
//   2^-120, one mul.bf16x2 by scale x 2^120 (session 19; measured in the FP8 seesaw, not kept:
//   NOTES-mla-decode-sm90.md); 7 the same with a test of every word for NaN codes, which route 6
//   decodes finite.
// Then checks route 6 against route 2 (the library's truncated route) bit for bit over every
// non-NaN code and scales 2^-40..2^7, and prints the count of differences.
// On the GPU machine: nvcc -O3 -arch=sm_90a -o conv_rate e4m3_conversion_rate.cu && ./conv_rate
#include <cstdio>
#include <cstdint>
typedef uint32_t u32;
__device__ __forceinline__ float f16f(unsigned short x){float r;asm("cvt.f32.f16 %0, %1;":"=f"(r):"h"(x));return r;}
__device__ __forceinline__ u32 pk(float lo,float hi){u32 r;asm("cvt.rn.bf16x2.f32 %0, %1, %2;":"=r"(r):"f"(hi),"f"(lo));return r;}
__device__ __forceinline__ void unpack(u32 w,u32&h0,u32&h1){asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}":"=r"(h0),"=r"(h1):"r"(w));}
__device__ __forceinline__ u32 prmt(u32 a,u32 b,u32 s){u32 r;asm("prmt.b32 %0,%1,%2,%3;":"=r"(r):"r"(a),"r"(b),"r"(s));return r;}
__device__ __forceinline__ u32 mulbf(u32 a,u32 b){u32 r;asm("mul.rn.bf16x2 %0,%1,%2;":"=r"(r):"r"(a),"r"(b));return r;}
template<int M> __device__ __forceinline__ uint2 conv(u32 w,float s,u32 s2){
  uint2 r; u32 h0,h1;
  if(M==0){ unpack(w,h0,h1); r.x=h0; r.y=h1; }
  if(M==1){ unpack(w,h0,h1); r.x=pk(f16f(h0&0xffff)*s,f16f(h0>>16)*s); r.y=pk(f16f(h1&0xffff)*s,f16f(h1>>16)*s);}
  if(M==2){ unpack(w,h0,h1); float a=f16f(h0&0xffff)*s,b=f16f(h0>>16)*s,c=f16f(h1&0xffff)*s,d=f16f(h1>>16)*s;
            r.x=prmt(__float_as_uint(a),__float_as_uint(b),0x7632); r.y=prmt(__float_as_uint(c),__float_as_uint(d),0x7632);}
  if(M==3){ unpack(w,h0,h1); auto rb=[](u32 h){return ((h&0x7fff7fffu)>>3)|(h&0x80008000u);};
            r.x=mulbf(mulbf(rb(h0),0x77807780u),s2); r.y=mulbf(mulbf(rb(h1),0x77807780u),s2);}
  if(M==4){ // bytes -> bf16 bits (x 2^-120) by integer ops, then x 2^120 x s
            u32 x0=prmt(w,0,0x4140), x1=prmt(w,0,0x4342);
            auto f=[](u32 x){return (((x&0x007f007fu)<<4)|((x<<8)&0x80008000u));};
            r.x=mulbf(mulbf(f(x0),0x7b807b80u),s2); r.y=mulbf(mulbf(f(x1),0x7b807b80u),s2);}
  if(M==6||M==7){ u32 lo=prmt(w,0,0x9180), hi=prmt(w,0,0xb3a2); lo=(lo<<4)&0x87f087f0u; hi=(hi<<4)&0x87f087f0u;
            r.x=mulbf(lo,s2); r.y=mulbf(hi,s2);
            if(M==7) r.x^=((w&0x7f7f7f7fu)+0x01010101u)&0x80808080u; }
  if(M==5){ // hadd2.f32 only path cost: unpack + 4 cvt f16->f32, pack (no mul)
            unpack(w,h0,h1); r.x=pk(f16f(h0&0xffff),f16f(h0>>16)); r.y=pk(f16f(h1&0xffff),f16f(h1>>16));}
  return r;
}
template<int M> __global__ void k(const u32* in, uint2* out, int iters, long long* cyc){
  u32 w[8]; for(int i=0;i<8;++i) w[i]=in[threadIdx.x*8+i];
  float s=1.0f/64; u32 s2=0x3c803c80u; uint2 acc=make_uint2(0,0);
  __syncthreads(); long long t0=clock64();
  for(int it=0;it<iters;++it){
#pragma unroll
    for(int i=0;i<8;++i){ uint2 r=conv<M>(w[i],s,s2); acc.x^=r.x; acc.y+=r.y; w[i]=w[i]*1664525u+r.x; }
  }
  long long t1=clock64(); out[blockIdx.x*blockDim.x+threadIdx.x]=acc; if(threadIdx.x==0) cyc[blockIdx.x]=t1-t0;
}
template<int M> void run(int warps){
  u32* in; uint2* out; long long* cyc; cudaMalloc(&in,4096*4); cudaMalloc(&out,132*1024*8); cudaMalloc(&cyc,132*8);
  cudaMemset(in,0x3a,4096*4); int iters=2000;
  k<M><<<132,warps*32>>>(in,out,iters,cyc); cudaDeviceSynchronize();
  k<M><<<132,warps*32>>>(in,out,iters,cyc); cudaDeviceSynchronize();
  long long c; cudaMemcpy(&c,cyc,8,cudaMemcpyDeviceToHost);
  double words_per_smsp=(double)iters*8*(warps/4.0);
  printf("mode %d warps %2d: %.2f cycles per word (4 codes) per SMSP\n",M,warps,c/words_per_smsp);
}
__global__ void check(int* bad){
  const u32 code=threadIdx.x; const int e=(int)blockIdx.x-40;  // scale 2^e
  const float s=ldexpf(1.0f,e); const float s120=s*ldexpf(1.0f,120);
  u32 s2; asm("cvt.rn.bf16x2.f32 %0, %1, %2;":"=r"(s2):"f"(s120),"f"(s120));
  if((code&0x7f)==0x7f) return;
  const u32 w=code*0x01010101u;
  uint2 a=conv<2>(w,s,0), b=conv<6>(w,s,s2);
  if(a.x!=b.x||a.y!=b.y){ int n=atomicAdd(bad,1); if(n<8) printf("code %02x scale 2^%d: %08x %08x vs %08x %08x\n",code,e,a.x,a.y,b.x,b.y); }
}
int main(){ for(int w: {4,8}){ run<0>(w); run<1>(w); run<2>(w); run<3>(w); run<4>(w); run<5>(w); run<6>(w); run<7>(w);}
  int* bad; cudaMalloc(&bad,4); cudaMemset(bad,0,4); check<<<48,256>>>(bad); int h; cudaMemcpy(&h,bad,4,cudaMemcpyDeviceToHost);
  printf("route 6 vs route 2 over every non-NaN code, scales 2^-40..2^7: %d differences\n",h); }
