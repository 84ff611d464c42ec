// Stage 1 on the GPU: every track state moved to its closest approach to the beamline.
// One thread per track. Contract: kernels/README.md section 1 (same semantics as the Numba twin).
#include "common.cuh"

// Below this squared transverse slope a track is parallel to the beam: unusable, kept at its z.
#define PVF_MIN_SLOPE2 1e-12

extern "C" __global__ void pvf_extrapolate(
    const double* __restrict__ x, const double* __restrict__ y, const double* __restrict__ z,
    const double* __restrict__ tx, const double* __restrict__ ty,
    const double* __restrict__ cov_xx, const double* __restrict__ cov_yy,
    const double* __restrict__ cov_xtx, const double* __restrict__ cov_yty,
    const double* __restrict__ cov_txtx, const double* __restrict__ cov_tyty,
    long long n_tracks, double beam_x, double beam_y, double zmin, double zmax,
    double max_track_beamline_chi2, double max_track_z0_err,
    double* __restrict__ out_x, double* __restrict__ out_y, double* __restrict__ out_z,
    double* __restrict__ out_wx, double* __restrict__ out_wy, double* __restrict__ out_sigma_z,
    unsigned char* __restrict__ out_usable) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n_tracks;
         i += (long long)gridDim.x * blockDim.x) {
        const double txi = tx[i], tyi = ty[i];
        const double slope2 = txi * txi + tyi * tyi;
        if (slope2 < PVF_MIN_SLOPE2) {
            out_x[i] = x[i];
            out_y[i] = y[i];
            out_z[i] = z[i];
            out_wx[i] = 1.0 / cov_xx[i];
            out_wy[i] = 1.0 / cov_yy[i];
            out_sigma_z[i] = PVF_INF;
            out_usable[i] = 0;
            continue;
        }
        const double dz = -((x[i] - beam_x) * txi + (y[i] - beam_y) * tyi) / slope2;
        const double z_beam = z[i] + dz;
        const double xb = x[i] + dz * txi;
        const double yb = y[i] + dz * tyi;
        const double wx = 1.0 / (cov_xx[i] + 2.0 * dz * cov_xtx[i] + dz * dz * cov_txtx[i]);
        const double wy = 1.0 / (cov_yy[i] + 2.0 * dz * cov_yty[i] + dz * dz * cov_tyty[i]);
        const double sigma_z = 1.0 / sqrt(txi * txi * wx + tyi * tyi * wy);
        const double chi2 = (xb - beam_x) * (xb - beam_x) * wx + (yb - beam_y) * (yb - beam_y) * wy;
        out_x[i] = xb;
        out_y[i] = yb;
        out_z[i] = z_beam;
        out_wx[i] = wx;
        out_wy[i] = wy;
        out_sigma_z[i] = sigma_z;
        // Positive weights too: a covariance that is not positive definite gives C_xx' < 0.
        out_usable[i] = (zmin < z_beam && z_beam < zmax && chi2 < max_track_beamline_chi2 &&
                         sigma_z < max_track_z0_err && wx > 0.0 && wy > 0.0) ? 1 : 0;
    }
}
