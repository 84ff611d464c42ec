// Shared device helpers of the pvfinder CUDA kernels (lengths in mm).
// Every helper is `static __device__ inline`, so each .cu compiles standalone and all of them
// can also be joined into one translation unit (the RawModule) without duplicate symbols.
// Include guards, not `#pragma once`: the loader prepends this text to the joined sources (so
// that CuPy's compile cache sees header edits) and the `#include` lines must then expand to
// nothing.
#ifndef PVFINDER_COMMON_CUH
#define PVFINDER_COMMON_CUH

// exp(-chi2/2) underflows to exactly 0 in double precision once chi2/2 > 745.13.
#define PVF_UNDERFLOW_CHI2 1500.0
// Seed terms below 2^-60 of exp(-chi2_cut/2) in all cannot move a weight's denominator beyond
// double rounding (2^-53); see pvf_negligible_chi2 (same constant as the Numba twin).
#define PVF_NEGLIGIBLE_BITS 60
// A 3x3 positive semi-definite matrix has 0 <= det <= product of its diagonal (Hadamard); below
// this fraction of that product the half-Hessian is treated as singular (as the Numba twin).
#define PVF_SINGULAR_DET_FRACTION 1e-12
// +infinity without math_constants.h (not available to NVRTC everywhere).
#define PVF_INF __longlong_as_double(0x7ff0000000000000LL)
#define PVF_FULL_WARP 0xffffffffu

// Bad-input codes written to the device error buffer. The loader (`_launch.py`,
// `ERROR_MESSAGES`) turns them into a ValueError naming the kernel; a test keeps both lists in
// step. In the order of the stages, as the Numba kernels meet them.
#define PVF_ERROR_HISTOGRAM_OFFSETS 1
#define PVF_ERROR_FIT_OFFSETS 2
#define PVF_ERROR_FIT_WEIGHT_OFFSETS 3
// errors[0] keeps the least (code << PVF_EVENT_BITS | event) reported in a launch sequence (all
// bits set while there is none): the lowest code, then its lowest event, whatever order the
// blocks run in; the Numba kernels raise at that one, the first they meet.
#define PVF_EVENT_BITS 40

static __device__ inline void pvf_report_error(long long* errors, int code, long long event) {
    atomicMin(reinterpret_cast<unsigned long long*>(errors),
              ((unsigned long long)code << PVF_EVENT_BITS) | (unsigned long long)event);
}

// True when [first, stop) is a valid range of a track array of length n_tracks.
static __device__ __forceinline__ bool pvf_valid_range(long long first, long long stop,
                                                       long long n_tracks) {
    return 0 <= first && first <= stop && stop <= n_tracks;
}

// Transverse chi2 of a straight track moved to z = vz, with respect to (vx, vy).
static __device__ __forceinline__ double pvf_track_chi2(double x, double y, double z, double tx,
                                                        double ty, double wx, double wy,
                                                        double vx, double vy, double vz) {
    const double dz = vz - z;
    const double rx = vx - (x + tx * dz);
    const double ry = vy - (y + ty * dz);
    return rx * rx * wx + ry * ry * wy;
}

// The chi2 from which a track-seed term is left out of D_t: the terms of at most max_seeds seeds
// beyond it add up to less than 2^-60 of exp(-chi2_cut/2), the smallest possible denominator of
// a weight, so leaving them out changes a weight by rounding at most (as negligible_chi2 of the
// Numba twin).
static __device__ __forceinline__ double pvf_negligible_chi2(double chi2_cut, int max_seeds) {
    const double bound = chi2_cut + 2.0 * log((double)max(max_seeds, 1)) +
                         2.0 * PVF_NEGLIGIBLE_BITS * log(2.0);
    return fmin(bound, PVF_UNDERFLOW_CHI2);
}

// exp(-chi2/2) for chi2 >= 0; a negative chi2 (from a direct call with a weight that is not
// positive) counts as 0, as in the Numba twin, so a term never exceeds 1. Callers compare
// chi2 with a cut first, so NaN (which fmin would turn into 0) never gets here.
static __device__ __forceinline__ double pvf_gauss_term(double chi2) {
    return exp(fmin(-0.5 * chi2, 0.0));
}

// exp(-chi2/2), the term of a track-seed pair; 0 from `negligible` on.
static __device__ __forceinline__ double pvf_seed_term(double chi2, double negligible) {
    return chi2 < negligible ? pvf_gauss_term(chi2) : 0.0;
}

// Sums of n values over one warp, in place in v[0..n): a butterfly, so that every lane ends
// with bit-identical totals (and so takes identical decisions) without shared memory.
static __device__ __forceinline__ void pvf_warp_sums(double* v, int n) {
    for (int j = 0; j < n; ++j)
        for (int offset = 16; offset > 0; offset >>= 1)
            v[j] += __shfl_xor_sync(PVF_FULL_WARP, v[j], offset);
}

// Inclusive prefix sum of one int per lane over the warp.
static __device__ __forceinline__ int pvf_warp_inclusive_scan(int value, int lane) {
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(PVF_FULL_WARP, value, offset);
        if (lane >= offset) value += other;
    }
    return value;
}

#endif  // PVFINDER_COMMON_CUH
