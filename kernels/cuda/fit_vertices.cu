// Stage 4 on the GPU: adaptive multi-vertex fit. One block per event: its threads first compute
// every track's D_t (into the global scratch `density`, one double per track), then each warp
// fits its own seeds (seeds are independent once D_t is known), lanes over tracks, the Newton
// sums of every iteration reduced with warp shuffles alone (no block barrier per iteration).
// Contract: kernels/README.md section 4 (same semantics as the Numba twin; the twin's candidate
// lists are an exact CPU shortcut, here every usable track is evaluated).
#include "common.cuh"

// The reduced sums of one iteration.
enum { S_PASS, S_W, S_CHI2, A_XX, A_YY, A_XZ, A_YZ, A_ZZ, G_X, G_Y, G_Z, N_SUMS };

extern "C" __global__ void pvf_fit_vertices(
    const long long* __restrict__ offsets, const double* __restrict__ x,
    const double* __restrict__ y, const double* __restrict__ z, const double* __restrict__ tx,
    const double* __restrict__ ty, const double* __restrict__ wx, const double* __restrict__ wy,
    const unsigned char* __restrict__ usable, long long n_all_tracks,
    const double* __restrict__ seeds, const int* __restrict__ n_seeds,
    const long long* __restrict__ weight_offsets, long long n_weights, int max_seeds,
    double beam_x, double beam_y, double max_chi2, double chi2_cut, double min_weight,
    int min_iter, int max_iter, double max_delta_z, int min_tracks, double max_rho2,
    double* __restrict__ out_pos, double* __restrict__ out_cov, double* __restrict__ out_chi2,
    double* __restrict__ out_ndof, double* __restrict__ out_n_tracks,
    unsigned char* __restrict__ out_valid, double* __restrict__ out_weights,
    double* __restrict__ density, long long* __restrict__ errors) {
    const long long e = blockIdx.x;
    const long long first = offsets[e], stop = offsets[e + 1];
    const int n_slots = max(min(n_seeds[e], max_seeds), 0);
    // Bad offsets would make this block read or write out of bounds: report and skip the event
    // (every test below is uniform over the block, so whole blocks return).
    if (!pvf_valid_range(first, stop, n_all_tracks) || stop - first > 0x7fffffffLL) {
        if (threadIdx.x == 0) pvf_report_error(errors, PVF_ERROR_FIT_OFFSETS, e);
        return;
    }
    const int n_tracks = (int)(stop - first);
    const long long weights_first = weight_offsets[e], weights_stop = weight_offsets[e + 1];
    if (!(weights_first >= 0 && weights_stop <= n_weights &&
          weights_stop - weights_first == (long long)n_slots * n_tracks)) {
        if (threadIdx.x == 0) pvf_report_error(errors, PVF_ERROR_FIT_WEIGHT_OFFSETS, e);
        return;
    }
    if (n_slots == 0) return;
    const double* seed_row = seeds + e * max_seeds;

    // D_t = sum over seeds of exp(-chi2(t, seed)/2), from the seed positions.
    const double negligible = pvf_negligible_chi2(chi2_cut, max_seeds);
    for (int t = threadIdx.x; t < n_tracks; t += blockDim.x) {
        const long long i = first + t;
        double sum = 0.0;
        if (usable[i] != 0)
            for (int s = 0; s < n_slots; ++s)
                sum += pvf_seed_term(pvf_track_chi2(x[i], y[i], z[i], tx[i], ty[i], wx[i], wy[i],
                                                    beam_x, beam_y, seed_row[s]),
                                     negligible);
        density[i] = sum;
    }
    __syncthreads();  // every warp reads every track's D_t below

    const double exp_cut = exp(-0.5 * chi2_cut);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    for (int s = warp; s < n_slots; s += n_warps) {
        const double seed_z = seed_row[s];
        double* weights = out_weights + weights_first + (long long)s * n_tracks;
        double vx = beam_x, vy = beam_y, vz = seed_z;
        bool singular = true;
        double inv[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        double sums[N_SUMS] = {0.0};  // zero as the outputs' sums when max_iter < 1
        for (int iteration = 0; iteration < max_iter; ++iteration) {
            for (int j = 0; j < N_SUMS; ++j) sums[j] = 0.0;
            for (int t = lane; t < n_tracks; t += 32) {
                const long long i = first + t;
                double w = 0.0;
                if (usable[i] != 0) {
                    const double txt = tx[i], tyt = ty[i], wxt = wx[i], wyt = wy[i];
                    const double dz = vz - z[i];
                    const double rx = vx - (x[i] + txt * dz);
                    const double ry = vy - (y[i] + tyt * dz);
                    const double chi2 = rx * rx * wxt + ry * ry * wyt;
                    if (chi2 < max_chi2) {
                        const double term = pvf_gauss_term(chi2);
                        const double own = pvf_seed_term(pvf_track_chi2(
                            x[i], y[i], z[i], txt, tyt, wxt, wyt, beam_x, beam_y, seed_z),
                            negligible);
                        w = term / (exp_cut + term + (density[i] - own));
                    }
                    if (w > min_weight && chi2 < max_chi2) {
                        const double wwx = w * wxt, wwy = w * wyt;
                        sums[S_PASS] += 1.0;
                        sums[S_W] += w;
                        sums[S_CHI2] += w * chi2;
                        sums[A_XX] += wwx;
                        sums[A_YY] += wwy;
                        sums[A_XZ] -= wwx * txt;
                        sums[A_YZ] -= wwy * tyt;
                        sums[A_ZZ] += wwx * txt * txt + wwy * tyt * tyt;
                        sums[G_X] += wwx * rx;
                        sums[G_Y] += wwy * ry;
                        sums[G_Z] -= wwx * txt * rx + wwy * tyt * ry;
                    } else {
                        w = 0.0;
                    }
                }
                weights[t] = w;
            }
            pvf_warp_sums(sums, N_SUMS);
            // Closed-form inverse of the symmetric half-Hessian (a_xy = 0: W is diagonal).
            const double a_xx = sums[A_XX], a_yy = sums[A_YY], a_xz = sums[A_XZ];
            const double a_yz = sums[A_YZ], a_zz = sums[A_ZZ], a_xy = 0.0;
            const double c_xx = a_yy * a_zz - a_yz * a_yz;
            const double c_xy = a_xz * a_yz - a_xy * a_zz;
            const double c_xz = a_xy * a_yz - a_yy * a_xz;
            const double det = a_xx * c_xx + a_xy * c_xy + a_xz * c_xz;
            // The bound on det holds for positive diagonals only (see the CPU kernel).
            singular = !(a_xx > 0.0 && a_yy > 0.0 && a_zz > 0.0
                         && det > PVF_SINGULAR_DET_FRACTION * a_xx * a_yy * a_zz
                         && isfinite(det));
            if (singular) {
                for (int j = 0; j < 6; ++j) inv[j] = 0.0;
                break;
            }
            const double r = 1.0 / det;
            inv[0] = c_xx * r;
            inv[1] = c_xy * r;
            inv[2] = (a_xx * a_zz - a_xz * a_xz) * r;
            inv[3] = c_xz * r;
            inv[4] = (a_xy * a_xz - a_xx * a_yz) * r;
            inv[5] = (a_xx * a_yy - a_xy * a_xy) * r;
            const double g_x = sums[G_X], g_y = sums[G_Y], g_z = sums[G_Z];
            const double step_z = -(inv[3] * g_x + inv[4] * g_y + inv[5] * g_z);
            vx -= inv[0] * g_x + inv[1] * g_y + inv[3] * g_z;
            vy -= inv[1] * g_x + inv[2] * g_y + inv[4] * g_z;
            vz += step_z;
            if (iteration + 1 >= min_iter && fabs(step_z) < max_delta_z) break;
        }
        const bool valid = !singular && sums[S_PASS] >= (double)min_tracks &&
                           (vx - beam_x) * (vx - beam_x) + (vy - beam_y) * (vy - beam_y) < max_rho2;
        if (!valid)
            for (int t = lane; t < n_tracks; t += 32) weights[t] = 0.0;
        if (lane == 0) {
            const long long slot = e * max_seeds + s;
            out_pos[3 * slot] = vx;
            out_pos[3 * slot + 1] = vy;
            out_pos[3 * slot + 2] = vz;
            for (int j = 0; j < 6; ++j) out_cov[6 * slot + j] = inv[j];
            out_chi2[slot] = sums[S_CHI2];
            out_n_tracks[slot] = sums[S_W];
            out_ndof[slot] = 2.0 * sums[S_W] - 3.0;
            out_valid[slot] = valid ? 1 : 0;
        }
    }
}
