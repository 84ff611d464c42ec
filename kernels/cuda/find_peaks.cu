// Stage 3 on the GPU: clusters of each event's histogram become seeds.
// One warp per event (blockDim.x a multiple of 32). The warp scans its histogram row 32 bins at
// a time (coalesced loads) and finds where proto-clusters start with a ballot. Proto-clusters
// are independent, so up to 32 of them are then walked at once, one lane each, with the state
// machine of the Numba twin. A first walk counts each proto-cluster's seeds, a warp prefix sum
// tells every lane where its seeds go, and a second walk writes them: seeds come out in
// increasing z, as on the CPU. Contract: kernels/README.md section 3.
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

// Bin i opens a proto-cluster. As the twin's sequential walk: a bin belongs to a run unless
// `h < threshold`, and a run goes on to the next bin only while `h[next] >= threshold` (the two
// differ only for NaN bins, which the twin also treats so).
static __device__ __forceinline__ bool pvf_run_starts(const double* h, int i,
                                                      double threshold) {
    const double value = h[i];
    if (value < threshold) return false;
    return i == 0 || h[i - 1] < threshold || !(value >= threshold);
}

// Walk the proto-cluster that starts at bin `start`; return how many seeds it gives. When
// `seeds` is not null, seed k is stored at seeds[base + k] if that is below max_seeds.
static __device__ int pvf_walk_run(const double* h, int n_bins, int start, double zmin,
                                   double bin_width, double threshold, double min_tracks_in_seed,
                                   double min_dip, double min_peak, double* seeds, int base,
                                   int max_seeds) {
    int n_found = 0;
    bool rising = true;
    double run_sum = 0.0;       // integral of the run's bins before bin i
    double boundary_sum = 0.0;  // integral up to the last kept boundary minimum
    int n_kept = 0;             // sub-clusters emitted so far
    int peak = -1;              // last kept maximum (none yet)
    double peak_value = 0.0;
    double low_value = PVF_INF, low_sum = 0.0;  // lowest minimum since that maximum
    int top = start;                            // highest bin of the run
    double top_value = -PVF_INF;
    // `emit` stores the seed of bin p (when asked to) and counts it.
    auto emit = [&](int p) {
        if (seeds != nullptr && base + n_found < max_seeds)
            seeds[base + n_found] = pvf_seed_z(h, n_bins, p, zmin, bin_width);
        ++n_found;
    };
    for (int i = start;; ++i) {
        const double value = h[i];
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
                        emit(peak);
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
        if (!run_continues) break;
    }
    if (peak < 0) return n_found;  // no maximum reached min_density
    if (run_sum - boundary_sum > min_tracks_in_seed) {
        emit(peak);
        ++n_kept;
    }
    if (n_kept == 0 && run_sum > min_tracks_in_seed) emit(top);
    return n_found;
}

extern "C" __global__ void pvf_find_peaks(
    const double* __restrict__ hist, long long n_events, int n_bins, double zmin,
    double bin_width, double threshold, double min_tracks_in_seed, double min_dip_density,
    double min_density, int max_seeds, double* __restrict__ out_seeds,
    int* __restrict__ out_n_seeds) {
    // Run starts waiting to be walked, per warp (room for the largest block, 32 warps).
    __shared__ int starts[32][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long e = (long long)blockIdx.x * (blockDim.x >> 5) + warp;
    if (e >= n_events) return;  // whole warps leave: no block-wide barrier below
    const double* h = hist + e * n_bins;
    double* seeds = out_seeds + e * max_seeds;
    int* batch = starts[warp];
    const double min_dip = min_dip_density * bin_width;
    const double min_peak = min_density * bin_width;
    int n_found = 0, n_batch = 0;

    // Walk the runs batch[0..n_batch) at once (lane k takes run k); seeds continue at n_found.
    auto flush = [&]() {
        __syncwarp();  // batch[] written by other lanes
        int count = 0;
        if (lane < n_batch)
            count = pvf_walk_run(h, n_bins, batch[lane], zmin, bin_width, threshold,
                                 min_tracks_in_seed, min_dip, min_peak, nullptr, 0, max_seeds);
        const int inclusive = pvf_warp_inclusive_scan(count, lane);
        if (count > 0 && n_found + inclusive - count < max_seeds)
            pvf_walk_run(h, n_bins, batch[lane], zmin, bin_width, threshold,
                         min_tracks_in_seed, min_dip, min_peak, seeds,
                         n_found + inclusive - count, max_seeds);
        n_found += __shfl_sync(PVF_FULL_WARP, inclusive, 31);
        n_batch = 0;
        __syncwarp();  // batch[] is rewritten next
    };

    for (int chunk = 0; chunk < n_bins; chunk += 32) {
        const int i = chunk + lane;
        const bool start = i < n_bins && pvf_run_starts(h, i, threshold);
        const unsigned mask = __ballot_sync(PVF_FULL_WARP, start);
        const int n_new = __popc(mask);
        if (n_new == 0) continue;
        if (n_batch + n_new > 32) flush();
        if (start) batch[n_batch + __popc(mask & ((1u << lane) - 1u))] = i;
        n_batch += n_new;
    }
    if (n_batch > 0) flush();
    if (lane == 0) out_n_seeds[e] = n_found;
}
