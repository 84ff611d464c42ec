"""Stage 4 on the CPU: adaptive multi-vertex fit of every seed.

Lengths in mm. The contract is ``kernels/README.md`` section 4.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from . import FASTMATH, check_event_ranges

__all__ = ["fit_vertices", "negligible_chi2"]

# exp(-χ²/2) underflows to exactly 0.0 in float64 once χ²/2 > 745.13.
_UNDERFLOW_CHI2 = 1500.0
# Seed terms below 2^-60 of exp(-chi2_cut/2) in all cannot move a weight's denominator
# (≥ exp(-chi2_cut/2)) beyond float64 rounding (2^-53): see negligible_chi2.
_NEGLIGIBLE_BITS = 60
# A 3×3 positive semi-definite matrix has 0 ≤ det ≤ product of its diagonal (Hadamard); below
# this fraction of that product the half-Hessian is treated as singular.
_SINGULAR_DET_FRACTION = 1e-12
# Candidate list (speed only, never the result): a seed's fit loops over the tracks that can
# reach χ² < max_chi2 while the vertex stays within _CANDIDATE_DZ (mm) in z of where the list
# was built and within the list's ρ (≥ _CANDIDATE_RHO mm) of the beamline; the list is rebuilt
# when the vertex leaves that box.
_CANDIDATE_DZ = 0.5
_CANDIDATE_RHO = 0.05
# Relative slack on the candidate bound, far above float64 rounding of the χ² arithmetic.
_CANDIDATE_SLACK = 1.0 + 1e-6
# A track's window in z (window/slope) is widened by these, relative and absolute (mm), far
# above the rounding of z ± extent: the z range then holds every seed the window test keeps.
_EXTENT_SLACK, _EXTENT_PAD = 1.0 + 1e-12, 1e-9

# exp(x) for x ≤ 0 inlined (see _exp_nonpositive): x = k·ln2 + r with k an integer and
# |r| ≤ ln2/2, exp(x) = 2^k · e^r. ln 2 = hi + lo with hi of 32 significant bits, so that k·hi
# is exact for every k used here (fdlibm's split).
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_EXP_LOWEST = -745.2  # exp(x) rounds to 0.0 below
_EXP_CLAMP = -746.0  # inputs are clamped here first: every k stays within two normal 2^(k/2)
# Adding 1.5·2^52 rounds a float64 of magnitude below 2^51 to an integer, which then sits in
# the sum's low bits: its bits minus those of 1.5·2^52 are that integer.
_ROUNDER = 1.5 * 2.0**52
_ROUNDER_BITS = 0x4338000000000000
# e^r by its Taylor series to r^13, highest power first: the first term left out is below 2e-16
# of e^r on |r| ≤ ln2/2.
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(13, -1, -1))

# Rows of the per-event track scratch array.
_DENSITY, _SLOPE, _REACH, _WINDOW, _EXTENT = range(5)
_N_SCRATCH = _EXTENT + 1
# Rows of a seed's lanes: its candidates' states, D_t minus their own term, and weights, one
# column per candidate. Contiguous, so that the fit's inner loop runs in SIMD lanes.
_LX, _LY, _LZ, _LTX, _LTY, _LWX, _LWY, _LOTHERS, _LWEIGHT = range(9)
_N_LANES = _LWEIGHT + 1
# The lanes are filled up to a multiple of this (one AVX-512 register of float64) with tracks
# that cannot pass: short loops then never fall back to one candidate at a time.
_LANE_WIDTH = 8
# The inner loop's sums may be reordered (fastmath "reassoc"): that is what lets LLVM run it
# in SIMD lanes (sums of several partial sums); they differ from the sequential order by
# rounding only.
_SUM_FASTMATH = FASTMATH | {"reassoc"}

# Scratch of the kernel, one row per Numba worker thread, kept per calling thread so that a
# steady stream of batches allocates nothing and finders in different threads never share it.
_workspaces = threading.local()


@numba.njit(cache=True, fastmath=FASTMATH)
def _track_chi2(x, y, z, tx, ty, wx, wy, vx, vy, vz):
    """Transverse χ² of a straight track, moved to z = vz, with respect to (vx, vy)."""
    dz = vz - z
    rx = vx - (x + tx * dz)
    ry = vy - (y + ty * dz)
    return rx * rx * wx + ry * ry * wy


def negligible_chi2(chi2_cut: float, max_seeds: int) -> float:
    """The χ² from which a track–seed term ``exp(-χ²/2)`` is left out of ``D_t`` (taken as 0).

    ``D_t`` only enters a weight's denominator ``exp(-chi2_cut/2) + term + D_t - own``, which
    is at least ``exp(-chi2_cut/2)``. The terms of at most ``max_seeds`` seeds at
    ``χ² ≥ chi2_cut + 2 ln(max_seeds) + 120 ln 2`` add up to less than ``2^-60`` of that, far
    below float64 rounding (``2^-53``): leaving them out can change a weight by rounding at
    most, and spares the exp (and the pair) for most tracks far from a seed. Never above the
    χ² where the term underflows to 0 anyway.
    """
    bound = chi2_cut + 2.0 * math.log(max(max_seeds, 1)) + 2.0 * _NEGLIGIBLE_BITS * math.log(2.0)
    return min(bound, _UNDERFLOW_CHI2)


def _bits_of(value: float) -> int:
    """The IEEE 754 bits of a float64, as an int64 (a bit cast, no conversion)."""
    return int(np.float64(value).view(np.int64))


def _float_of(bits: int) -> float:
    """The float64 whose IEEE 754 bits are the low 64 of ``bits`` (a bit cast)."""
    return float(np.uint64(bits & 0xFFFF_FFFF_FFFF_FFFF).view(np.float64))


# In compiled code the two are LLVM bit casts; the Python versions above serve
# NUMBA_DISABLE_JIT=1, under which the kernels run as Python.
@intrinsic
def _bitcast(typingctx, value, to):
    """``value``'s bits as the type ``to`` of the same width (numba.types.int64, float64)."""
    target = to.instance_type

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))
    return target(value, to), codegen


@overload(_bits_of, jit_options={"cache": True})
def _bits_of_compiled(value):
    return lambda value: _bitcast(value, types.int64)


@overload(_float_of, jit_options={"cache": True})
def _float_of_compiled(bits):
    return lambda bits: _bitcast(bits, types.float64)


@numba.njit(cache=True, fastmath=FASTMATH)
def _exp_nonpositive(x):
    """``exp(x)`` for ``x ≤ 0`` within 1 ulp of libm's; NaN and ``x < -745.2`` give 0, and
    ``x > 0`` (a negative χ² from a covariance that is not positive) is taken as 0.

    Through libm's out-of-line ``exp``, or with table lookups and a float64-to-int64
    conversion (which x86 has for SIMD lanes only with AVX-512), the fit's inner loop stays
    one track at a time. This has neither, nor a branch: ``e^r`` is a polynomial and
    ``2^k`` is built from its bits, as two factors ``2^(k - k//2)·2^(k//2)`` so that each is
    a normal number even where the result is subnormal; LLVM then runs the loop in SIMD lanes.
    """
    x = min(x, 0.0)
    clamped = max(x, _EXP_CLAMP)
    shifted = clamped * (1.0 / math.log(2.0)) + _ROUNDER
    k = _bits_of(shifted) - _ROUNDER_BITS  # round(x/ln2) in [-1076, 0] (NaN: any; unused)
    k_float = shifted - _ROUNDER
    r = (clamped - k_float * _LN2_HI) - k_float * _LN2_LO
    e_r = _EXP_TAYLOR[0]
    for coefficient in _EXP_TAYLOR[1:]:  # Horner's scheme
        e_r = e_r * r + coefficient
    half = k >> 1
    value = e_r * _float_of((half + 1023) << 52) * _float_of((k - half + 1023) << 52)
    return value if x >= _EXP_LOWEST else 0.0


@numba.njit(cache=True, fastmath=FASTMATH)
def _seed_term(chi2, negligible):
    """exp(-χ²/2), the Gaussian term of a track–seed pair (0 from ``negligible`` on)."""
    return _exp_nonpositive(-0.5 * chi2) if chi2 < negligible else 0.0


@numba.njit(cache=True, fastmath=FASTMATH)
def _inverse_sym3(a_xx, a_xy, a_yy, a_xz, a_yz, a_zz):
    """Closed-form (cofactor) inverse of a symmetric 3×3 matrix.

    Returns ``(singular, i_xx, i_xy, i_yy, i_xz, i_yz, i_zz)``; ``singular`` is true when a
    diagonal entry is not positive or the determinant is at most ``_SINGULAR_DET_FRACTION`` of
    the diagonal's product (or not finite), and then the inverse is not computed (zeros).
    With ``a_xy = 0``, as the fit calls it, that is Sylvester's test of a positive-definite
    matrix, with a margin.
    """
    c_xx = a_yy * a_zz - a_yz * a_yz
    c_xy = a_xz * a_yz - a_xy * a_zz
    c_xz = a_xy * a_yz - a_yy * a_xz
    det = a_xx * c_xx + a_xy * c_xy + a_xz * c_xz
    # The bound on det holds for positive diagonals only: with one negative (a direct call's
    # weight W < 0) it let through a rounding residue of an exactly singular matrix.
    if not (a_xx > 0.0 and a_yy > 0.0 and a_zz > 0.0
            and det > _SINGULAR_DET_FRACTION * a_xx * a_yy * a_zz and math.isfinite(det)):
        return True, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    inv = 1.0 / det
    return (False, c_xx * inv, c_xy * inv, (a_xx * a_zz - a_xz * a_xz) * inv, c_xz * inv,
            (a_xy * a_xz - a_xx * a_yz) * inv, (a_xx * a_yy - a_xy * a_xy) * inv)


@numba.njit(cache=True, fastmath=FASTMATH)
def _may_reach(slope, reach, z, centre_z, rho):
    """Whether a track can have χ² < max_chi2 with some vertex at most ``_CANDIDATE_DZ`` from
    ``centre_z`` in z and ``rho`` from the beamline.

    Why it is exact: with ``W_min = min(W_x, W_y)``, ``χ² ≥ W_min·|r|²`` and
    ``|r| ≥ |t|·|v_z - z_t| - ρ_v - ρ_t``, so ``χ² < max_chi2`` implies
    ``|t|·(|z_t - centre_z| - _CANDIDATE_DZ) < sqrt(max_chi2/W_min) + ρ_t + ρ_v``, and
    ``reach`` is ``sqrt(max_chi2/W_min) + ρ_t`` (with slack). A NaN bound keeps the track.
    """
    return not slope * (abs(z - centre_z) - _CANDIDATE_DZ) > reach + rho


@numba.njit(cache=True, fastmath=FASTMATH)
def _collect_candidates(x, y, z, tx, ty, wx, wy, usable, scratch, candidates, others,
                        beam_x, beam_y, seed_z, centre_z, rho, negligible):
    """Fill ``candidates`` with the usable tracks that :func:`_may_reach` a vertex in the box
    around ``centre_z``, and ``others`` with their ``D_t`` minus their own term for the seed
    at ``seed_z``; return how many."""
    n = 0
    for t in range(len(x)):
        if usable[t] == 0 or not _may_reach(scratch[_SLOPE, t], scratch[_REACH, t], z[t],
                                            centre_z, rho):
            continue
        own = _seed_term(_track_chi2(x[t], y[t], z[t], tx[t], ty[t], wx[t], wy[t],
                                     beam_x, beam_y, seed_z), negligible)
        candidates[n] = t
        others[n] = scratch[_DENSITY, t] - own
        n += 1
    return n


@numba.njit(cache=True)
def _padded(n):
    """``n`` rounded up to a multiple of ``_LANE_WIDTH``."""
    return -(-n // _LANE_WIDTH) * _LANE_WIDTH


@numba.njit(cache=True, fastmath=FASTMATH)
def _gather(x, y, z, tx, ty, wx, wy, candidates, others, n_candidates, lanes):
    """Copy the candidates' states and their ``others`` into the columns of ``lanes``, padded
    to a multiple of ``_LANE_WIDTH`` columns with tracks at x = NaN (χ² NaN: they never pass
    and add nothing); return the number of columns."""
    for k in range(n_candidates):
        t = candidates[k]
        lanes[_LX, k], lanes[_LY, k], lanes[_LZ, k] = x[t], y[t], z[t]
        lanes[_LTX, k], lanes[_LTY, k] = tx[t], ty[t]
        lanes[_LWX, k], lanes[_LWY, k] = wx[t], wy[t]
        lanes[_LOTHERS, k] = others[k]
    n_columns = _padded(n_candidates)
    lanes[:, n_candidates:n_columns] = 0.0
    lanes[_LX, n_candidates:n_columns] = np.nan
    return n_columns


@numba.njit(cache=True, fastmath=_SUM_FASTMATH, error_model="numpy")
def _accumulate(lanes, n_columns, vx, vy, vz, max_chi2, exp_cut, min_weight):
    """One iteration's weights (into ``lanes[_LWEIGHT]``) and weighted sums at ``(vx, vy, vz)``.

    Returns ``(n_pass, Σw, Σw·χ², A_xx, A_yy, A_xz, A_yz, A_zz, g_x, g_y, g_z)``. No branch
    but selects (a failing track gets w = 0 and adds nothing, whatever its values), so that
    LLVM vectorises it.
    """
    n_pass, sum_w, sum_chi2 = 0, 0.0, 0.0
    a_xx = a_yy = a_xz = a_yz = a_zz = 0.0
    g_x = g_y = g_z = 0.0
    for k in range(n_columns):
        txt, tyt, wxt, wyt = lanes[_LTX, k], lanes[_LTY, k], lanes[_LWX, k], lanes[_LWY, k]
        dz = vz - lanes[_LZ, k]
        rx = vx - (lanes[_LX, k] + txt * dz)
        ry = vy - (lanes[_LY, k] + tyt * dz)
        chi2 = rx * rx * wxt + ry * ry * wyt
        term = _exp_nonpositive(-0.5 * chi2)
        w = term / (exp_cut + term + lanes[_LOTHERS, k])
        passed = (chi2 < max_chi2) & (w > min_weight)
        lanes[_LWEIGHT, k] = w if passed else 0.0
        if passed:  # LLVM turns this into selects: a failing track adds exactly nothing
            n_pass += 1
            sum_w += w
            sum_chi2 += w * chi2
            # Half-Hessian Σ w·H W Hᵀ and half-gradient Σ w·H W r, H = [[1,0],[0,1],[-tx,-ty]].
            wwx, wwy = w * wxt, w * wyt
            a_xx += wwx
            a_yy += wwy
            a_xz -= wwx * txt
            a_yz -= wwy * tyt
            a_zz += wwx * txt * txt + wwy * tyt * tyt
            g_x += wwx * rx
            g_y += wwy * ry
            g_z -= wwx * txt * rx + wwy * tyt * ry
    return n_pass, sum_w, sum_chi2, a_xx, a_yy, a_xz, a_yz, a_zz, g_x, g_y, g_z


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _fit_seed(x, y, z, tx, ty, wx, wy, usable, scratch, candidates, others, n_candidates,
              lanes, seed_z, beam_x, beam_y, max_chi2, chi2_cut, negligible, min_weight,
              min_iter, max_iter, max_delta_z, min_tracks, max_rho2, pos, cov, weights):
    """Fit one seed: write its position, covariance and track weights; return
    ``(chi2, n_tracks, valid)``.

    ``candidates[:n_candidates]`` (with ``others``) is the seed's candidate list for the box
    around ``seed_z`` and ``_CANDIDATE_RHO``, as :func:`_collect_candidates` makes it;
    ``lanes`` is scratch of ``_N_LANES`` rows and a column per track, rounded up to a multiple
    of ``_LANE_WIDTH`` (see :func:`_gather`).
    """
    exp_cut = math.exp(-0.5 * chi2_cut)
    vx, vy, vz = beam_x, beam_y, seed_z
    centre_z, rho_box = seed_z, _CANDIDATE_RHO
    n_columns = _gather(x, y, z, tx, ty, wx, wy, candidates, others, n_candidates, lanes)
    singular = True
    n_pass, sum_w, sum_chi2 = 0, 0.0, 0.0
    inverse = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for iteration in range(max_iter):
        rho = math.sqrt((vx - beam_x) ** 2 + (vy - beam_y) ** 2)
        if abs(vz - centre_z) > _CANDIDATE_DZ or rho > rho_box:
            centre_z, rho_box = vz, max(_CANDIDATE_RHO, 2.0 * rho)
            n_candidates = _collect_candidates(x, y, z, tx, ty, wx, wy, usable, scratch,
                                               candidates, others, beam_x, beam_y, seed_z,
                                               centre_z, rho_box, negligible)
            n_columns = _gather(x, y, z, tx, ty, wx, wy, candidates, others, n_candidates,
                                lanes)
        (n_pass, sum_w, sum_chi2, a_xx, a_yy, a_xz, a_yz, a_zz,
         g_x, g_y, g_z) = _accumulate(lanes, n_columns, vx, vy, vz, max_chi2, exp_cut,
                                      min_weight)
        result = _inverse_sym3(a_xx, 0.0, a_yy, a_xz, a_yz, a_zz)
        singular, inverse = result[0], result[1:]
        if singular:
            break
        i_xx, i_xy, i_yy, i_xz, i_yz, i_zz = inverse
        step_z = -(i_xz * g_x + i_yz * g_y + i_zz * g_z)
        vx -= i_xx * g_x + i_xy * g_y + i_xz * g_z
        vy -= i_xy * g_x + i_yy * g_y + i_yz * g_z
        vz += step_z
        if iteration + 1 >= min_iter and abs(step_z) < max_delta_z:
            break
    pos[0], pos[1], pos[2] = vx, vy, vz
    for j in range(6):
        cov[j] = inverse[j]
    valid = (not singular and n_pass >= min_tracks
             and (vx - beam_x) ** 2 + (vy - beam_y) ** 2 < max_rho2)
    weights[:] = 0.0
    if valid:  # the last iteration's weights, at the position that entered it
        for k in range(n_candidates):
            weights[candidates[k]] = lanes[_LWEIGHT, k]
    return sum_chi2, sum_w, valid


def fit_vertices(
    offsets: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, tx: np.ndarray,
    ty: np.ndarray, wx: np.ndarray, wy: np.ndarray, usable: np.ndarray,
    seeds: np.ndarray, n_seeds: np.ndarray, weight_offsets: np.ndarray,
    beam_x: float, beam_y: float, max_chi2: float, chi2_cut: float, min_weight: float,
    min_iter: int, max_iter: int, max_delta_z: float, min_tracks: int, max_rho2: float,
    out_pos: np.ndarray, out_cov: np.ndarray, out_chi2: np.ndarray, out_ndof: np.ndarray,
    out_n_tracks: np.ndarray, out_valid: np.ndarray, out_weights: np.ndarray,
) -> None:
    """Adaptive multi-vertex fit of the first ``m_e = min(n_seeds[e], max_seeds)`` seeds of
    every event.

    Each seed starts at ``(beam_x, beam_y, seed)``; the seeds are fitted independently but
    share tracks through ``D_t = Σ_seeds exp(-χ²(t, seed)/2)``, computed once per event from
    the seed positions (terms at ``χ² ≥`` :func:`negligible_chi2` left out: they cannot
    change a weight beyond rounding). ``χ²(t, v)`` is the transverse χ² of track ``t`` moved
    along its line to ``v_z``: ``r = v_xy - (x_t + t·(v_z - z_t))``,
    ``χ² = r_x² W_x + r_y² W_y`` with the state and weights from ``extrapolate``. In every
    iteration a usable track with ``χ² < max_chi2`` gets ::

        w = exp(-χ²/2) / (exp(-chi2_cut/2) + exp(-χ²/2) + D_t - exp(-χ²(t, seed)/2))

    and, when ``w > min_weight``, enters the Newton step ``Δ = -A⁻¹ g`` with the half-Hessian
    ``A = Σ w·H W Hᵀ`` and half-gradient ``g = Σ w·H W r``, ``H = [[1,0],[0,1],[-tx,-ty]]``,
    ``W = diag(W_x, W_y)``. Iteration stops after ``min_iter`` iterations once
    ``|Δz| < max_delta_z``, or after ``max_iter``.

    The outputs come from the last iteration's accumulation (evaluated at the position that
    entered it; its step is applied to the position): ``out_cov = A⁻¹`` (xx, xy, yy, xz, yz,
    zz), ``out_chi2 = Σ w·χ²``, ``out_n_tracks = Σ w``, ``out_ndof = 2Σw - 3`` and the weights.
    A vertex is invalid when fewer than ``min_tracks`` tracks have ``χ² < max_chi2`` and
    ``w > min_weight``, when ``(v_x - beam_x)² + (v_y - beam_y)² ≥ max_rho2``, or when ``A``
    is singular (then the fit stops there and ``out_cov`` is zero); an invalid vertex's
    weights are all 0 while its other outputs keep the fit's values.

    Parameters
    ----------
    offsets : ndarray of int64, shape (n_events + 1,)
        Event boundaries in the track arrays.
    x, y, z, tx, ty, wx, wy : ndarray of float64, shape (n_tracks,)
        Track states at the beamline and their weights 1/C_xx', 1/C_yy' (1/mm²). The slopes
        ``tx``, ``ty`` are stage 1's inputs, passed on: they may be float32, read as float64.
    usable : ndarray of uint8, shape (n_tracks,)
        Only usable tracks take part.
    seeds : ndarray of float64, shape (n_events, max_seeds)
        Seed z (mm).
    n_seeds : ndarray of int32, shape (n_events,)
        Clusters found per event (may exceed ``max_seeds``).
    weight_offsets : ndarray of int64, shape (n_events + 1,)
        Start of each event's ``m_e × n_e`` block of weights; slot ``s``, track ``t`` is at
        ``weight_offsets[e] + s·n_e + t``.
    beam_x, beam_y : float
        Beamline position (mm).
    max_chi2, chi2_cut, min_weight : float
        Track χ² cut, the adaptive-weight χ² cut-off and the smallest weight kept.
    min_iter, max_iter : int
        Bounds on the number of Newton iterations.
    max_delta_z : float
        Convergence threshold on the z step (mm).
    min_tracks : int
        Minimal number of contributing tracks of a valid vertex.
    max_rho2 : float
        Bound (mm²) on the vertex's squared transverse distance to the beamline.
    out_pos, out_cov, out_chi2, out_ndof, out_n_tracks, out_valid, out_weights : ndarray
        Written for slots ``s < m_e``; other slots are left untouched.

    Raises
    ------
    ValueError
        When the offsets decrease or point outside the track arrays, or the weight offsets
        do not give each event ``m_e × n_tracks`` weights inside ``out_weights``.

    Notes
    -----
    The per-event scratch (track bounds, candidate lists, the seed's lanes) lives in a
    workspace with one row per Numba thread, kept for the calling thread and grown only when a
    batch holds a larger event than any before: a steady stream of batches allocates nothing.
    """
    check_event_ranges(offsets, len(x), "fit_vertices")
    max_tracks, max_block = _event_sizes(offsets, n_seeds, seeds.shape[1], weight_offsets,
                                         len(out_weights))
    n_floats = _N_SCRATCH * max_tracks + _N_LANES * _padded(max_tracks) + max_block
    floats, ints = _workspace(n_floats, max_block + seeds.shape[1])
    _fit_events(offsets, x, y, z, tx, ty, wx, wy, usable, seeds, n_seeds, weight_offsets,
                beam_x, beam_y, max_chi2, chi2_cut, negligible_chi2(chi2_cut, seeds.shape[1]),
                min_weight, min_iter, max_iter,
                max_delta_z, min_tracks, max_rho2, out_pos, out_cov, out_chi2, out_ndof,
                out_n_tracks, out_valid, out_weights, floats, ints)


def _workspace(n_floats: int, n_ints: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's workspace: rows of at least ``n_floats`` floats and ``n_ints`` ints."""
    floats = getattr(_workspaces, "floats", None)
    ints = getattr(_workspaces, "ints", None)
    # get_thread_id() < get_num_threads() <= NUMBA_NUM_THREADS, whatever set_num_threads says.
    n_rows = numba.config.NUMBA_NUM_THREADS
    if floats is None or floats.shape[1] < n_floats:
        floats = _workspaces.floats = np.empty((n_rows, int(1.25 * n_floats) + 1))
    if ints is None or ints.shape[1] < n_ints:
        ints = _workspaces.ints = np.empty((n_rows, int(1.25 * n_ints) + 1), dtype=np.int64)
    return floats, ints


@numba.njit(cache=True)
def _event_sizes(offsets, n_seeds, max_seeds, weight_offsets, n_weights):
    """The most tracks in an event with seeds, and the most fitted slots × tracks of one;
    ``ValueError`` (in the CUDA twin's words) where an event's weights would not be its
    ``min(n_seeds, max_seeds) × n_tracks`` inside ``out_weights``."""
    max_tracks = max_block = 0
    for e in range(len(offsets) - 1):
        n_slots = max(min(n_seeds[e], max_seeds), 0)
        n_tracks = offsets[e + 1] - offsets[e]
        if not (weight_offsets[e] >= 0 and weight_offsets[e + 1] <= n_weights
                and weight_offsets[e + 1] - weight_offsets[e] == n_slots * n_tracks):
            raise ValueError("fit_vertices: weight_offsets do not give min(n_seeds, max_seeds) "
                             "* n_tracks weights per event inside out_weights (first seen in "
                             "event " + str(e) + ")")
        if n_slots > 0:
            max_tracks = max(max_tracks, n_tracks)
            max_block = max(max_block, n_slots * n_tracks)
    return max_tracks, max_block


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _track_bounds(x, y, tx, ty, wx, wy, beam_x, beam_y, max_chi2, negligible, scratch):
    """Each track's slope ``|t|``, reach (see :func:`_may_reach`) and window: seeds with
    ``|t|·|Δz|`` beyond the window neither are within the track's reach nor get a term
    (``χ² ≥ negligible``: 0), by the bound of :func:`_may_reach`.

    Every track, usable or not, in one branch-free loop that LLVM vectorises: taken one track
    at a time, the square roots and divisions cost about a sixth of the fit at ν = 7.6.
    """
    for t in range(len(x)):
        tx_t, ty_t = np.float64(tx[t]), np.float64(ty[t])  # float32 squares in float64
        slope = math.sqrt(tx_t * tx_t + ty_t * ty_t)
        w_min = min(wx[t], wy[t])
        rho = math.sqrt((x[t] - beam_x) ** 2 + (y[t] - beam_y) ** 2)
        reach = (math.sqrt(max_chi2 / w_min) + rho) * _CANDIDATE_SLACK
        scratch[_SLOPE, t], scratch[_REACH, t] = slope, reach
        window = max((math.sqrt(negligible / w_min) + rho) * _CANDIDATE_SLACK,
                     reach + _CANDIDATE_RHO + slope * _CANDIDATE_DZ)
        scratch[_WINDOW, t] = window
        scratch[_EXTENT, t] = window / slope * _EXTENT_SLACK + _EXTENT_PAD


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _fit_events(offsets, x, y, z, tx, ty, wx, wy, usable, seeds, n_seeds, weight_offsets,
                beam_x, beam_y, max_chi2, chi2_cut, negligible, min_weight, min_iter, max_iter,
                max_delta_z, min_tracks, max_rho2, out_pos, out_cov, out_chi2, out_ndof,
                out_n_tracks, out_valid, out_weights, floats, ints):
    """The kernel of :func:`fit_vertices`, with its scratch rows ``floats`` and ``ints``."""
    max_seeds = seeds.shape[1]
    for e in numba.prange(len(offsets) - 1):
        first, stop = offsets[e], offsets[e + 1]
        n_slots = min(n_seeds[e], max_seeds)
        if n_slots <= 0:
            continue
        n_tracks = stop - first
        ex, ey, ez = x[first:stop], y[first:stop], z[first:stop]
        etx, ety, ewx, ewy = tx[first:stop], ty[first:stop], wx[first:stop], wy[first:stop]
        eusable = usable[first:stop]
        seed_row = seeds[e]
        block = n_slots * n_tracks
        worker = numba.get_thread_id()
        own_floats, own_ints = floats[worker], ints[worker]
        scratch = own_floats[: _N_SCRATCH * n_tracks].reshape((_N_SCRATCH, n_tracks))
        # Per seed: its candidate tracks and their D_t minus the own term, built together with
        # D_t in one pass over the track–seed pairs.
        end = _N_SCRATCH * n_tracks
        others = own_floats[end : end + block].reshape((n_slots, n_tracks))
        n_columns = _padded(n_tracks)
        lanes = own_floats[end + block : end + block + _N_LANES * n_columns].reshape(
            (_N_LANES, n_columns))
        candidates = own_ints[:block].reshape((n_slots, n_tracks))
        n_candidates = own_ints[block : block + n_slots]
        n_candidates[:] = 0
        _track_bounds(ex, ey, etx, ety, ewx, ewy, beam_x, beam_y, max_chi2, negligible,
                      scratch)
        # Seeds come in increasing z from find_peaks; then a track's scan over them stops at
        # the first beyond its window in z (any order is still handled, only slower).
        increasing = True
        for s in range(1, n_slots):
            increasing &= seed_row[s - 1] <= seed_row[s]
        for t in range(n_tracks):
            density = 0.0
            if eusable[t] != 0:
                slope, reach = scratch[_SLOPE, t], scratch[_REACH, t]
                window = scratch[_WINDOW, t]  # skipping the seeds beyond spares most pairs
                lower = ez[t] - scratch[_EXTENT, t]
                upper = ez[t] + scratch[_EXTENT, t]
                for s in range(n_slots):
                    if seed_row[s] < lower:
                        continue
                    if seed_row[s] > upper:
                        if increasing:
                            break
                        continue
                    if slope * abs(ez[t] - seed_row[s]) > window:
                        continue
                    own = _seed_term(_track_chi2(ex[t], ey[t], ez[t], etx[t], ety[t],
                                                 ewx[t], ewy[t], beam_x, beam_y, seed_row[s]),
                                     negligible)
                    density += own
                    if _may_reach(slope, reach, ez[t], seed_row[s], _CANDIDATE_RHO):
                        k = n_candidates[s]
                        candidates[s, k] = t
                        others[s, k] = own
                        n_candidates[s] = k + 1
            scratch[_DENSITY, t] = density
        for s in range(n_slots):
            for k in range(n_candidates[s]):
                others[s, k] = scratch[_DENSITY, candidates[s, k]] - others[s, k]
            start = weight_offsets[e] + s * n_tracks
            chi2, sum_w, valid = _fit_seed(
                ex, ey, ez, etx, ety, ewx, ewy, eusable, scratch, candidates[s], others[s],
                n_candidates[s], lanes, seed_row[s], beam_x, beam_y, max_chi2, chi2_cut,
                negligible, min_weight, min_iter, max_iter, max_delta_z, min_tracks, max_rho2,
                out_pos[e, s], out_cov[e, s], out_weights[start:start + n_tracks])
            out_chi2[e, s] = chi2
            out_n_tracks[e, s] = sum_w
            out_ndof[e, s] = 2.0 * sum_w - 3.0
            out_valid[e, s] = 1 if valid else 0
