"""Numba kernels of the five stages (the contract is ``kernels/README.md``)."""

# Floating-point freedom of every CPU kernel: "contract" lets LLVM fuse a·b + c into one FMA
# instruction (one rounding instead of two, as nvcc does by default for the CUDA kernels). No
# other fastmath flag: the kernels test for NaN and infinity and rely on IEEE semantics.
FASTMATH = {"contract"}
