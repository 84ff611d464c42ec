"""The stage kernels, a pair per stage: ``cpu`` (Numba) and ``cuda`` (CUDA C through CuPy),
with the same signatures and meaning (``README.md``). What the two share lives here."""

from __future__ import annotations

import numpy as np

__all__ = ["BAD_TRACK_OFFSETS", "check_track_offsets"]

# What the kernels of both backends say of track offsets they cannot read by event.
BAD_TRACK_OFFSETS = "offsets decrease or point outside the track arrays"


def check_track_offsets(offsets: np.ndarray, n_tracks: int) -> None:
    """The histogram kernel's check of its track offsets, made on the host for a whole batch.

    For batches the pipeline hands to the stages in chunks: each kernel sees its own chunk,
    and would name an event of it.

    Raises
    ------
    ValueError
        In the kernels' words, naming the first event whose tracks do not run forwards
        within ``0..n_tracks``.
    """
    offsets = np.asarray(offsets)
    starts, stops = offsets[:-1], offsets[1:]
    bad = np.flatnonzero(~((starts >= 0) & (starts <= stops) & (stops <= n_tracks)))
    if bad.size:
        raise ValueError(f"histogram: {BAD_TRACK_OFFSETS} (first seen in event {bad[0]})")
