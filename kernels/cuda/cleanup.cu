// Stage 5 on the GPU: duplicate removal and z ordering (one thread per event: at most
// max_seeds vertices each, a few insertion sorts), then the compaction of the kept vertices
// into flat outputs (one warp per event: the weight rows are long and copied by all lanes).
// Same rules as the Numba twins. Contract: kernels/README.md section 5.
#include "common.cuh"

extern "C" __global__ void pvf_cleanup(
    const double* __restrict__ pos, const double* __restrict__ cov,
    const double* __restrict__ n_tracks, const unsigned char* __restrict__ valid,
    const int* __restrict__ n_seeds, long long n_events, int max_seeds, double min_chi2_dist,
    int* __restrict__ out_order, int* __restrict__ out_n) {
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n_events) return;
    const long long row = e * max_seeds;
    int* order = out_order + row;  // doubles as the scratch list
    const int n_slots = min(n_seeds[e], max_seeds);
    // Valid slots by decreasing n_tracks; insertion sort is stable (ties keep slot order).
    int n_valid = 0;
    for (int s = 0; s < n_slots; ++s) {
        if (valid[row + s] == 0) continue;
        int j = n_valid;
        while (j > 0 && n_tracks[row + order[j - 1]] < n_tracks[row + s]) {
            order[j] = order[j - 1];
            --j;
        }
        order[j] = s;
        ++n_valid;
    }
    // Greedy selection against the vertices already kept.
    int n_kept = 0;
    for (int j = 0; j < n_valid; ++j) {
        const int s = order[j];
        const double zs = pos[3 * (row + s) + 2], var_z = cov[6 * (row + s) + 5];
        bool duplicate = false;
        for (int k = 0; k < n_kept; ++k) {
            const int other = order[k];
            const double dz = zs - pos[3 * (row + other) + 2];
            if (dz * dz < min_chi2_dist * (var_z + cov[6 * (row + other) + 5])) {
                duplicate = true;
                break;
            }
        }
        if (!duplicate) order[n_kept++] = s;
    }
    // Kept slots by increasing (z, slot).
    for (int j = 1; j < n_kept; ++j) {
        const int s = order[j];
        const double zs = pos[3 * (row + s) + 2];
        int k = j;
        while (k > 0) {
            const double zk = pos[3 * (row + order[k - 1]) + 2];
            if (!(zk > zs || (zk == zs && order[k - 1] > s))) break;
            order[k] = order[k - 1];
            --k;
        }
        order[k] = s;
    }
    for (int j = n_kept; j < max_seeds; ++j) order[j] = -1;
    out_n[e] = n_kept;
}

// Number of per-vertex output rows: x, y, z, six covariance terms, chi2, ndof, n_tracks.
#define PVF_VERTEX_ROWS 12

extern "C" __global__ void pvf_compact(
    const long long* __restrict__ track_offsets, const long long* __restrict__ weight_offsets,
    const int* __restrict__ order, const int* __restrict__ n_kept,
    const long long* __restrict__ vertex_offsets, const long long* __restrict__ weight_base,
    const double* __restrict__ pos, const double* __restrict__ cov,
    const double* __restrict__ chi2, const double* __restrict__ ndof,
    const double* __restrict__ n_tracks, const double* __restrict__ weights,
    long long n_events, int max_seeds, long long capacity,
    double* __restrict__ out_vertices, long long* __restrict__ out_weight_offsets,
    double* __restrict__ out_weights) {
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp == 0 && lane == 0) out_weight_offsets[vertex_offsets[n_events]] = weight_base[n_events];
    if (warp >= n_events) return;
    const long long e = warp;
    const long long n_e = track_offsets[e + 1] - track_offsets[e];
    for (int k = 0; k < n_kept[e]; ++k) {
        const long long slot = e * max_seeds + order[e * max_seeds + k];
        const long long v = vertex_offsets[e] + k;
        double value = 0.0;
        if (lane < 3) value = pos[3 * slot + lane];
        else if (lane < 9) value = cov[6 * slot + lane - 3];
        else if (lane == 9) value = chi2[slot];
        else if (lane == 10) value = ndof[slot];
        else if (lane == 11) value = n_tracks[slot];
        if (lane < PVF_VERTEX_ROWS) out_vertices[lane * capacity + v] = value;
        const long long start = weight_base[e] + k * n_e;
        if (lane == 0) out_weight_offsets[v] = start;
        const double* source = weights + weight_offsets[e] + (slot - e * max_seeds) * n_e;
        for (long long t = lane; t < n_e; t += 32) out_weights[start + t] = source[t];
    }
}
