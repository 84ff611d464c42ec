// Stage 2 on the GPU: one z histogram per event. One block per event, threads over its tracks;
// the event's histogram is accumulated in dynamic shared memory (n_bins doubles, sized by the
// loader) with shared-memory double atomics (sm_60+) and written out once, coalesced.
// Contract: kernels/README.md section 2 (same semantics as the Numba twin; only the order of
// the additions into a bin differs, so bins agree to rounding).
#include "common.cuh"

// Half-width of the polynomial kernel in units of sigma_z: the CDF below integrates
// (15/16)(1 - s^2)^2 on s in [-1, 1], whose variance is a^2/7, so a = sqrt(7) gives unit variance.
#define PVF_HALF_WIDTH 2.6457513110645907

// Polynomial CDF in units of the half-width, clamped to exactly 0 and 1 outside [-1, 1].
static __device__ __forceinline__ double pvf_cdf_of_scaled(double s) {
    s = fmin(fmax(s, -1.0), 1.0);
    const double eta = 1.0 - s * s;
    return 0.5 + s * (0.5 + eta * (0.25 + eta * 0.1875));
}

extern "C" __global__ void pvf_histogram(
    const long long* __restrict__ offsets, const double* __restrict__ z_beam,
    const double* __restrict__ sigma_z, const unsigned char* __restrict__ usable,
    long long n_tracks, double zmin, double bin_width, int n_bins,
    double* __restrict__ out_hist, long long* __restrict__ errors) {
    extern __shared__ double hist[];
    const long long e = blockIdx.x;
    long long first = offsets[e], stop = offsets[e + 1];
    if (!pvf_valid_range(first, stop, n_tracks)) {
        if (threadIdx.x == 0) pvf_report_error(errors, PVF_ERROR_HISTOGRAM_OFFSETS, e);
        first = stop = 0;  // an empty row rather than reads out of bounds
    }
    for (int b = threadIdx.x; b < n_bins; b += blockDim.x) hist[b] = 0.0;
    __syncthreads();

    const int last = n_bins - 2;  // bins 0 and n_bins - 1 are never filled
    const double per_bin = 1.0 / bin_width;
    for (long long t = first + threadIdx.x; t < stop; t += blockDim.x) {
        const double sigma = sigma_z[t];
        if (usable[t] == 0 || !(sigma > 0.0 && sigma < PVF_INF)) continue;
        const double zt = z_beam[t], half = PVF_HALF_WIDTH * sigma;
        const double first_bin = floor((zt - half - zmin) * per_bin);
        const double last_bin = floor((zt + half - zmin) * per_bin);
        if (!(last_bin >= 1.0 && first_bin <= (double)last)) continue;
        const int b_lo = (int)fmax(first_bin, 1.0);
        const int b_hi = (int)fmin(last_bin, (double)last);
        // Bin edges in units of the half-width; each edge's CDF is evaluated once.
        const double scale = 1.0 / half;
        const double s_lo = (zmin + b_lo * bin_width - zt) * scale;
        const double step = bin_width * scale;
        double f_lo = pvf_cdf_of_scaled(s_lo);
        for (int k = 0; k <= b_hi - b_lo; ++k) {
            const double f_hi = pvf_cdf_of_scaled(s_lo + (k + 1) * step);
            atomicAdd(&hist[b_lo + k], f_hi - f_lo);
            f_lo = f_hi;
        }
    }
    __syncthreads();
    double* row = out_hist + e * n_bins;
    for (int b = threadIdx.x; b < n_bins; b += blockDim.x) row[b] = hist[b];
}
