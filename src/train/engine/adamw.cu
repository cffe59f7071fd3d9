// AdamW's update as three in-place passes over a tensor's elements, for the autograd engine on
// CUDA (src/train/inplace_adamw.rs launches them; its CPU implementations are the same
// arithmetic, in the same order, and are tested against east's single-pass AdamW).
// Compiled to PTX by build.rs when the `cuda` feature is on.
//
//   gi = scale·g
//   m ← beta1·m + gain1·gi                  (gain1 = 1 − beta1)
//   v ← beta2·v + gain2·gi·gi               (gain2 = 1 − beta2)
//   p ← p·decay − step·m / (√v / bc2_sqrt + eps)
//
// decay = 1 − lr·wd, step = lr / (1 − beta1^t), bc2_sqrt = √(1 − beta2^t): every constant is
// computed on the host in f64 and rounded to the element type once.
#include <stddef.h>

__device__ __forceinline__ float east_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double east_sqrt(double x) { return sqrt(x); }

template <typename T>
__device__ void first_moment(T *m, const T *g, const size_t n, const T beta, const T gain, const T scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        const T gi = g[i] * scale;
        m[i] = beta * m[i] + gain * gi;
    }
}

template <typename T>
__device__ void second_moment(T *v, const T *g, const size_t n, const T beta, const T gain, const T scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        const T gi = g[i] * scale;
        v[i] = beta * v[i] + gain * gi * gi;
    }
}

template <typename T>
__device__ void update(T *p, const T *m, const T *v, const size_t n, const T decay, const T step, const T bc2_sqrt,
                       const T eps) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        const T denom = east_sqrt(v[i]) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step * m[i] / denom;
    }
}

#define EAST_ADAMW(T, SUFFIX)                                                                                   \
    extern "C" __global__ void east_adamw_first_moment_##SUFFIX(T *m, const T *g, const size_t n, const T beta, \
                                                                const T gain, const T scale) {                 \
        first_moment(m, g, n, beta, gain, scale);                                                               \
    }                                                                                                           \
    extern "C" __global__ void east_adamw_second_moment_##SUFFIX(T *v, const T *g, const size_t n,              \
                                                                 const T beta, const T gain, const T scale) {   \
        second_moment(v, g, n, beta, gain, scale);                                                              \
    }                                                                                                           \
    extern "C" __global__ void east_adamw_update_##SUFFIX(T *p, const T *m, const T *v, const size_t n,         \
                                                          const T decay, const T step, const T bc2_sqrt,        \
                                                          const T eps) {                                        \
        update(p, m, v, n, decay, step, bc2_sqrt, eps);                                                         \
    }

EAST_ADAMW(float, f32)
EAST_ADAMW(double, f64)
