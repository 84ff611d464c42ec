"""Numba kernels of the five stages (the contract is ``kernels/README.md``)."""

# Floating-point freedom of every CPU kernel: "contract" lets LLVM fuse a·b + c into one FMA
# instruction (one rounding instead of two, as nvcc does by default for the CUDA kernels). One
# loop adds "reassoc" (the fit's sums over a seed's tracks, which it lets LLVM split over SIMD
# lanes). No flag that assumes away NaN or infinity: the kernels test for them.
FASTMATH = {"contract"}
