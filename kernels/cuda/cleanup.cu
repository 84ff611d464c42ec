// Stage 5 on the GPU: duplicate removal and z ordering. One thread per event (at most
// max_seeds vertices each, a few insertion sorts), the same rules as the Numba twin.
// Contract: kernels/README.md section 5.
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
