// Stage 3 on the GPU: clusters of each event's histogram become seeds. One thread per event
// walks its histogram row once, with the exact state machine of the Numba twin (the walk is
// sequential by nature; events give the parallelism).
// Contract: kernels/README.md section 3.
#include "common.cuh"

// Centre of bin `peak` moved to the vertex of the parabola through it and its neighbours,
// by at most half a bin.
static __device__ double pvf_seed_z(const double* h, int n_bins, int peak, double zmin,
                                    double bin_width) {
    const double centre = h[peak];
    const double below = peak > 0 ? h[peak - 1] : centre;
    const double above = peak + 1 < n_bins ? h[peak + 1] : centre;
    const double curvature = 2.0 * centre - below - above;
    double shift = curvature > 0.0 ? 0.5 * (above - below) / curvature : 0.0;
    shift = fmin(fmax(shift, -0.5), 0.5);
    return zmin + (peak + 0.5 + shift) * bin_width;
}

static __device__ __forceinline__ int pvf_emit(double* seeds, int max_seeds, int n_found,
                                               double z) {
    if (n_found < max_seeds) seeds[n_found] = z;
    return n_found + 1;
}

extern "C" __global__ void pvf_find_peaks(
    const double* __restrict__ hist, long long n_events, int n_bins, double zmin,
    double bin_width, double threshold, double min_tracks_in_seed, double min_dip_density,
    double min_density, int max_seeds, double* __restrict__ out_seeds,
    int* __restrict__ out_n_seeds) {
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n_events) return;
    const double* h = hist + e * n_bins;
    double* seeds = out_seeds + e * max_seeds;
    const double min_dip = min_dip_density * bin_width;
    const double min_peak = min_density * bin_width;
    int n_found = 0;
    bool in_run = false, rising = true;
    double run_sum = 0.0, boundary_sum = 0.0;
    int n_kept = 0, peak = -1, top = -1;
    double peak_value = 0.0, low_value = PVF_INF, low_sum = 0.0, top_value = -PVF_INF;
    for (int i = 0; i < n_bins; ++i) {
        const double value = h[i];
        if (value < threshold) continue;
        if (!in_run) {
            in_run = true;
            rising = true;
            run_sum = boundary_sum = 0.0;
            n_kept = 0;
            peak = -1;
            low_value = PVF_INF;
            top = -1;
            top_value = -PVF_INF;
        }
        const bool run_continues = i + 1 < n_bins && h[i + 1] >= threshold;
        const double following = run_continues ? h[i + 1] : -PVF_INF;
        if (value > top_value) {
            top = i;
            top_value = value;
        }
        if (rising && following <= value) {
            rising = false;
            if (value >= min_peak) {
                if (peak < 0) {
                    peak = i;
                    peak_value = value;
                    low_value = PVF_INF;
                } else if (peak_value - low_value > min_dip && value - low_value > min_dip) {
                    // A significant dip closes the sub-cluster of the last kept maximum.
                    if (low_sum - boundary_sum > min_tracks_in_seed) {
                        n_found = pvf_emit(seeds, max_seeds, n_found,
                                           pvf_seed_z(h, n_bins, peak, zmin, bin_width));
                        ++n_kept;
                    }
                    boundary_sum = low_sum;
                    peak = i;
                    peak_value = value;
                    low_value = PVF_INF;
                } else if (value > peak_value) {
                    peak = i;
                    peak_value = value;
                    low_value = PVF_INF;
                }
            }
        } else if (!rising && following > value) {
            rising = true;
            if (peak >= 0 && value < low_value) {
                low_value = value;
                low_sum = run_sum + 0.5 * value;
            }
        }
        run_sum += value;
        if (run_continues) continue;
        in_run = false;
        if (peak < 0) continue;  // no maximum reached min_density
        if (run_sum - boundary_sum > min_tracks_in_seed) {
            n_found = pvf_emit(seeds, max_seeds, n_found,
                               pvf_seed_z(h, n_bins, peak, zmin, bin_width));
            ++n_kept;
        }
        if (n_kept == 0 && run_sum > min_tracks_in_seed)
            n_found = pvf_emit(seeds, max_seeds, n_found, pvf_seed_z(h, n_bins, top, zmin, bin_width));
    }
    out_n_seeds[e] = n_found;
}
