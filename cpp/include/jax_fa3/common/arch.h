// Included first by every CUDA kernel header.
#pragma once

// wgmma, setmaxnreg and the other Hopper-only instructions exist only in the
// sm_90a target; a plain sm_90 build compiles them out silently and the
// kernels would compute garbage. Refuse to build that.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "jax_fa3 kernels must be compiled for sm_90a (-gencode=arch=compute_90a,code=sm_90a); sm_90 silently drops wgmma."
#endif

#if defined(__CUDACC__)
#define JAX_FA3_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JAX_FA3_HOST_DEVICE inline
#endif
