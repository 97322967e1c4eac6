// Included first by every CUDA kernel header.
#pragma once

// wgmma, setmaxnreg and the other Hopper-only instructions exist only in the
// sm_90a target; a plain sm_90 build compiles them out silently and the
// kernels would compute garbage. Refuse to build that.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "jax_fa3 kernels must be compiled for sm_90a (-gencode=arch=compute_90a,code=sm_90a); sm_90 silently drops wgmma."
#endif

// wgmma atoms with N not in {8, 16, 32, 64, 96, 128, 192, 256} (e.g. the
// forward's 160/112/80-key blocks) exist in CuTe only with this switch; without
// it the atom selectors quietly fall back to N = 16 pieces. Must precede every
// CuTe include, hence here (kernel traits also assert the atom they got).
#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#endif

#if defined(__CUDACC__)
#define JAX_FA3_HOST_DEVICE __host__ __device__ __forceinline__
#define JAX_FA3_DEVICE __device__ __forceinline__
#else
#define JAX_FA3_HOST_DEVICE inline
#endif
