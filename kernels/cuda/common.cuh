// Shared device helpers of the pvfinder CUDA kernels (lengths in mm).
// Every helper is `static __device__ inline`, so each .cu compiles standalone and all of them
// can also be joined into one translation unit (the RawModule) without duplicate symbols.
#pragma once

// exp(-chi2/2) underflows to exactly 0 in double precision once chi2/2 > 745.13: skipping the
// exp beyond this chi2 changes no result (same constant as the Numba twin).
#define PVF_UNDERFLOW_CHI2 1500.0
// A 3x3 positive semi-definite matrix has 0 <= det <= product of its diagonal (Hadamard); below
// this fraction of that product the half-Hessian is treated as singular (as the Numba twin).
#define PVF_SINGULAR_DET_FRACTION 1e-12
// +infinity without math_constants.h (not available to NVRTC everywhere).
#define PVF_INF __longlong_as_double(0x7ff0000000000000LL)

// Transverse chi2 of a straight track moved to z = vz, with respect to (vx, vy).
static __device__ __forceinline__ double pvf_track_chi2(double x, double y, double z, double tx,
                                                        double ty, double wx, double wy,
                                                        double vx, double vy, double vz) {
    const double dz = vz - z;
    const double rx = vx - (x + tx * dz);
    const double ry = vy - (y + ty * dz);
    return rx * rx * wx + ry * ry * wy;
}

// exp(-chi2/2), exactly 0 once it underflows.
static __device__ __forceinline__ double pvf_seed_term(double chi2) {
    return chi2 < PVF_UNDERFLOW_CHI2 ? exp(-0.5 * chi2) : 0.0;
}

// Sums of n values over the block, in place in v[0..n): every thread gets the totals.
// blockDim.x must be a multiple of 32; `scratch` holds n * 32 doubles. Synchronises twice.
static __device__ __forceinline__ void pvf_block_sums(double* v, int n, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    for (int j = 0; j < n; ++j)
        for (int offset = 16; offset > 0; offset >>= 1)
            v[j] += __shfl_down_sync(0xffffffffu, v[j], offset);
    __syncthreads();  // scratch may still be read from a previous call
    if (lane == 0)
        for (int j = 0; j < n; ++j) scratch[j * 32 + warp] = v[j];
    __syncthreads();
    for (int j = 0; j < n; ++j) {  // the same order in every thread: identical totals
        double total = 0.0;
        for (int w = 0; w < n_warps; ++w) total += scratch[j * 32 + w];
        v[j] = total;
    }
}
