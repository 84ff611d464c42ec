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

// Sums of n values over one warp, in place in v[0..n): a butterfly, so that every lane ends
// with bit-identical totals (and so takes identical decisions) without shared memory.
static __device__ __forceinline__ void pvf_warp_sums(double* v, int n) {
    for (int j = 0; j < n; ++j)
        for (int offset = 16; offset > 0; offset >>= 1)
            v[j] += __shfl_xor_sync(0xffffffffu, v[j], offset);
}
