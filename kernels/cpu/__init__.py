"""Numba kernels of the five stages (the contract is ``kernels/README.md``)."""

import numba

# Floating-point freedom of every CPU kernel: "contract" lets LLVM fuse a·b + c into one FMA
# instruction (one rounding instead of two, as nvcc does by default for the CUDA kernels). One
# loop adds "reassoc" (the fit's sums over a seed's tracks, which it lets LLVM split over SIMD
# lanes). No flag that assumes away NaN or infinity: the kernels test for them.
FASTMATH = {"contract"}


@numba.njit(cache=True)
def check_event_ranges(offsets, n_items, kernel):
    """Raise ``ValueError`` unless every event's ``offsets[e]:offsets[e+1]`` runs forwards
    within ``0..n_items``, with the words of the CUDA twins' error report (which skip such an
    event and raise after the launch): bad offsets would make a kernel read out of bounds."""
    for e in range(len(offsets) - 1):
        if not 0 <= offsets[e] <= offsets[e + 1] <= n_items:
            # Written out, not BAD_TRACK_OFFSETS: Numba's cache would keep a global's old
            # value (it keys on this file); a test holds the two the same.
            raise ValueError(kernel + ": offsets decrease or point outside the track arrays "
                             "(first seen in event " + str(e) + ")")
