"""Event data model: flat structure-of-arrays with per-event offsets.

All containers hold one flat array per field plus an ``offsets`` array of length
``n_events + 1`` (``int64``) so that the items of event ``e`` are
``offsets[e]:offsets[e + 1]``. Arrays may live on the host (numpy) or on a GPU (cupy):
values are checked where they live, and converted to awkward arrays on the host. Lengths are
in mm.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import awkward as ak
import numpy as np

__all__ = [
    "TRACK_FIELDS",
    "VERTEX_FIELDS",
    "MC_VERTEX_FIELDS",
    "TrackBatch",
    "VertexBatch",
    "MCVertices",
    "MCTruth",
    "as_track_batch",
    "jagged_array",
    "offsets_from_counts",
]

TRACK_FIELDS = (
    "x", "y", "z", "tx", "ty",
    "cov_xx", "cov_yy", "cov_xtx", "cov_yty", "cov_txtx", "cov_tyty",
)
VERTEX_FIELDS = (
    "x", "y", "z",
    "cov_xx", "cov_xy", "cov_yy", "cov_xz", "cov_yz", "cov_zz",
    "chi2", "ndof", "n_tracks",
)
MC_VERTEX_FIELDS = ("x", "y", "z", "n_reconstructible")

_VARIANCE_FIELDS = frozenset(
    {"cov_xx", "cov_yy", "cov_txtx", "cov_tyty", "cov_zz"}
)


def _to_host(array: Any, copy: bool = False) -> np.ndarray:
    """Return ``array`` as a numpy array, copying from the GPU when needed (and from host
    memory too when ``copy``)."""
    if _array_module(array) is not np:  # not any .get(): a pandas Series has get(key)
        return array.get()
    return np.array(array, copy=True) if copy else np.asarray(array)


def _array_module(array: Any):
    """numpy or cupy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def offsets_from_counts(counts: Any, what: str = "counts") -> np.ndarray:
    """Turn per-event counts into ``int64`` offsets (``[0, c0, c0+c1, ...]``).

    Raises
    ------
    ValueError
        If a count is negative or not an integer.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {counts.shape}")
    if counts.size and not np.issubdtype(counts.dtype, np.number):  # booleans: a mask?
        raise ValueError(f"{what} must be integers, got {counts.dtype}")
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        if not np.all(np.mod(counts, 1) == 0):
            raise ValueError(f"{what} must be integers")
    bad = np.flatnonzero(counts < 0)
    if bad.size:
        raise ValueError(f"{what} of event {bad[0]} is negative ({counts[bad[0]]})")
    if counts.size and counts.sum(dtype=np.float64) >= 2.0**63:  # int64 offsets would wrap
        raise ValueError(f"{what} add up to more than 64-bit offsets can hold")
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def jagged_array(offsets: Any, values: Any) -> ak.Array:
    """One list per entry: ``values`` cut at ``offsets``, wrapped as they are, without a copy
    (``ak.unflatten`` builds the same from counts, but checks them again and takes about ten
    times as long).

    Parameters
    ----------
    offsets : array of int
        Where each list starts in ``values``, and where the last one ends (one more than the
        lists; non-decreasing and within ``values``, which is not checked).
    values : numpy.ndarray or awkward.Array
        A flat host array, or an awkward array (of lists, for lists of lists).

    Returns
    -------
    awkward.Array
    """
    content = values.layout if isinstance(values, ak.Array) else ak.contents.NumpyArray(values)
    return ak.Array(ak.contents.ListOffsetArray(
        ak.index.Index64(np.asarray(offsets, dtype=np.int64)), content))


def _is_integer(value: Any) -> bool:
    """An integer (also numpy's, or a 0-d array of one), not a float or a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_count(value: Any) -> bool:
    """Whether ``value`` is a non-negative integer (a Python or numpy one, not a bool)."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= 0)


def _check_flag(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool (Python's or numpy's): "no" is true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _refuse_unread(value: Any, what: str) -> None:
    """Raise ``TypeError`` for an uproot object or a lazy Dask collection given for values: a
    TTree is a mapping of branches and a TBranch converts to an empty array, so either would
    be read as no events."""
    home = type(value).__module__.partition(".")[0]
    if home == "uproot":  # Model_TTree_v20: a TTree
        kind = re.sub(r"^Model_|_v\d+$", "", type(value).__name__)
        raise TypeError(f"{what} is an uproot {kind}, not its values: read "
                        "them first (tree.arrays(how=dict)), or use pvfinder.io.read_tracks")
    if home in ("dask", "dask_awkward"):
        raise TypeError(f"{what} is a lazy Dask collection: compute it first, or reconstruct "
                        "the files with pvfinder.distributed")


def _check_event_range(start: int, stop: int, n_events: int, what: str) -> None:
    if not (_is_integer(start) and _is_integer(stop) and 0 <= start <= stop <= n_events):
        raise ValueError(f"{what}: events {start}:{stop} are not a range of the {n_events} "
                         "events (integers, 0 <= start <= stop <= n_events)")


def _check_offsets(offsets: np.ndarray, length: int | None, what: str, *,
                   lists: str = "event", values: str = "the fields") -> None:
    """Offsets start at 0, never decrease and (when ``length`` is given) end at ``length``;
    messages name ``what`` offsets, the ``lists`` they cut and the ``values`` cut."""
    if offsets.ndim != 1 or offsets.size == 0:
        raise ValueError(f"{what} offsets must be a non-empty 1-d array")
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"{what} offsets must be integers, got {offsets.dtype}")
    if offsets[0] != 0:
        raise ValueError(f"{what} offsets must start at 0, got {offsets[0]}")
    steps = np.diff(offsets.astype(np.int64, copy=False))  # unsigned ones wrapped around
    bad = np.flatnonzero(steps < 0)
    if bad.size:
        raise ValueError(f"{what} offsets decrease at {lists} {bad[0]}")
    if length is not None and offsets[-1] != length:
        raise ValueError(
            f"{what} offsets end at {offsets[-1]} but {values} hold {length} entries"
        )


def _check_weights(offsets: np.ndarray, weight_offsets: np.ndarray, weights: np.ndarray
                   ) -> None:
    """Weights lie in [0, 1], and the vertices of an event have as many as each other."""
    offsets = offsets.astype(np.int64, copy=False)  # np.repeat refuses uint64 counts
    weight_offsets = weight_offsets.astype(np.int64, copy=False)
    # Two reductions when all are in range (NaN fails both); the scan only names the first.
    if weights.size and not (weights.min() >= 0.0 and weights.max() <= 1.0):
        bad = np.flatnonzero(~((weights >= 0.0) & (weights <= 1.0)))
        vertex = _event_of(weight_offsets, int(bad[0]))
        event = _event_of(offsets, vertex)
        raise ValueError(f"vertices: weight {weights[bad[0]]} of vertex {vertex - offsets[event]}"
                         f" in event {event} is not in [0, 1]")
    per_vertex = np.diff(weight_offsets)
    first_of_event = per_vertex[np.repeat(offsets[:-1], np.diff(offsets))]
    bad = np.flatnonzero(per_vertex != first_of_event)
    if bad.size:
        event = _event_of(offsets, int(bad[0]))
        raise ValueError(
            f"vertices: vertex {bad[0] - offsets[event]} of event {event} has "
            f"{per_vertex[bad[0]]} weights and vertex 0 {first_of_event[bad[0]]}: each has one "
            f"per input track of the event")


def _first_true(xp: Any, mask: Any) -> int | None:
    """Index of the first true entry of ``mask``, or ``None``; one reduction when all false."""
    if not bool(mask.any()):
        return None
    return int(xp.flatnonzero(mask)[0])


def _event_of(offsets: np.ndarray, index: int) -> int:
    return int(np.searchsorted(offsets, index, side="right") - 1)


_J = TypeVar("_J", bound="_Jagged")


class _Jagged:
    """Shared behaviour of the offset-based containers (validation, awkward, slicing)."""

    FIELDS: ClassVar[tuple[str, ...]]
    FLOAT_FIELDS: ClassVar[frozenset[str]]
    WHAT: ClassVar[str]
    ITEM: ClassVar[str]

    offsets: Any

    @property
    def n_events(self) -> int:
        """Number of events."""
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Number of items in each event."""
        offsets = _to_host(self.offsets)
        # int64 whatever the offsets' type: numpy refuses uint64 counts to np.repeat.
        return np.diff(offsets).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return self.n_events

    def __getitem__(self: _J, events: slice) -> _J:  # noqa: PYI019 (typing.Self: 3.11)
        """``batch[start:stop]``: those events, as ``select_events`` gives them (views;
        negative and missing bounds count as for a list; no step)."""
        if not isinstance(events, slice):
            raise TypeError(f"{type(self).__name__} is indexed by a slice of events "
                            f"(batch[i:i + 1] for event i); to_awkward()[i] gives one event's "
                            f"{self.WHAT} as records")
        start, stop, step = events.indices(self.n_events)
        if step != 1:
            raise ValueError(f"{type(self).__name__}: a slice of events takes no step")
        return self.select_events(start, max(start, stop))

    def __repr__(self) -> str:  # a summary: the arrays may hold millions of numbers
        where = "" if _array_module(self.offsets) is np else ", on the GPU"
        return (f"{type(self).__name__}({self.n_events} events, "
                f"{int(self.offsets[-1])} {self.WHAT}{self._repr_details()}{where})")

    def _repr_details(self) -> str:
        return ""

    @classmethod
    def _validated_fields(
        cls, offsets: np.ndarray, fields: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        missing = [name for name in cls.FIELDS if name not in fields]
        if missing:
            raise ValueError(f"{cls.WHAT}: missing field(s) {', '.join(missing)}")
        unknown = [name for name in fields if name not in cls.FIELDS]
        if unknown:
            raise ValueError(f"{cls.WHAT}: unknown field(s) {', '.join(unknown)}")
        length = int(offsets[-1])
        out = {}
        for name in cls.FIELDS:
            # CuPy arrays stay on the device: each check is one reduction there, and only a
            # failing one brings an index back.
            xp = _array_module(fields[name])
            array = xp.asarray(fields[name])  # a masked array's data, without its mask
            if array.ndim != 1:
                raise ValueError(
                    f"{cls.WHAT}: field {name!r} must be one-dimensional, got shape {array.shape}"
                )
            if array.size != length:
                raise ValueError(
                    f"{cls.WHAT}: field {name!r} has {array.size} entries but the counts add up to {length}"
                )
            if np.ma.is_masked(fields[name]):  # the values under the mask are no data
                bad = int(np.flatnonzero(np.ma.getmaskarray(fields[name]))[0])
                raise ValueError(f"{cls.WHAT}: field {name!r} is masked (a missing value) "
                                 f"{cls._located(offsets, bad)}")
            if name in cls.FLOAT_FIELDS:
                if array.dtype not in (np.float32, np.float64):
                    if array.dtype.kind not in "iuf":  # complex lost its imaginary part
                        raise ValueError(
                            f"{cls.WHAT}: field {name!r} must hold real numbers, got "
                            f"{array.dtype}")
                    array = array.astype(np.float64)
                bad = _first_true(xp, ~xp.isfinite(array))
                if bad is not None:
                    raise ValueError(f"{cls.WHAT}: field {name!r} is {array[bad]} "
                                     f"{cls._located(offsets, bad)}")
                if name in _VARIANCE_FIELDS:
                    bad = _first_true(xp, array < 0)
                    if bad is not None:
                        raise ValueError(f"{cls.WHAT}: variance {name!r} is negative "
                                         f"({array[bad]}) {cls._located(offsets, bad)}")
            else:
                if not np.issubdtype(array.dtype, np.integer):
                    raise ValueError(
                        f"{cls.WHAT}: field {name!r} must be integers, got {array.dtype}"
                    )
                bad = _first_true(xp, array < 0)  # counts (n_reconstructible)
                if bad is not None:
                    raise ValueError(f"{cls.WHAT}: field {name!r} is negative ({array[bad]}) "
                                     f"{cls._located(offsets, bad)}")
            out[name] = array
        dtypes = {out[n].dtype for n in cls.FIELDS if n in cls.FLOAT_FIELDS}
        if len(dtypes) > 1:  # one precision per container keeps the kernels simple
            for name in cls.FIELDS:
                if name in cls.FLOAT_FIELDS:
                    out[name] = out[name].astype(np.float64)
        return out

    @classmethod
    def _located(cls, offsets: np.ndarray, index: int) -> str:
        """Where flat ``index`` is: its event, its place there and in the flat arrays."""
        event = _event_of(offsets, index)
        return (f"in event {event} ({cls.ITEM} {index - int(offsets[event])} of the event, "
                f"{index} of the flat arrays)")

    @classmethod
    def _offsets_from(cls, counts: Any, offsets: Any) -> np.ndarray:
        if (counts is None) == (offsets is None):
            raise ValueError(f"{cls.WHAT}: give exactly one of counts= or offsets=")
        if counts is not None:
            return offsets_from_counts(counts, f"{cls.WHAT} counts")
        offsets = np.asarray(_to_host(offsets))
        _check_offsets(offsets, None, cls.WHAT)
        return offsets.astype(np.int64)

    @classmethod
    def from_arrays(cls: type[_J], *, counts: Any = None, offsets: Any = None, **fields: Any) -> _J:
        """Validate flat arrays (one per field of ``FIELDS``) and per-event ``counts`` (or
        ``offsets``) and build the container.

        Raises
        ------
        ValueError
            Naming the field and event for a missing field, wrong shape or length, a
            non-finite value, a negative variance or inconsistent counts/offsets.
        """
        offsets = cls._offsets_from(counts, offsets)
        return cls(offsets=offsets, **cls._validated_fields(offsets, fields))

    @classmethod
    def from_awkward(cls: type[_J], array: Any) -> _J:
        """From a jagged awkward array of records holding every field of ``FIELDS``.

        Parameters
        ----------
        array : awkward.Array or array-like
            One list of records per event (other fields are ignored); events that never
            held a record (``[[], []]``) are empty events.

        Raises
        ------
        ValueError
            Naming the field, event and item for a missing field, an event or value that is
            None, a field of other than numbers, and what :meth:`from_arrays` refuses.
        """
        offsets, fields = cls._fields_from_awkward(array)
        return cls.from_arrays(offsets=offsets, **fields)

    def _field_arrays(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def check_structure(self) -> None:
        """Check that the offsets cut every field into the events: what :meth:`from_arrays`
        ensures along with the values, and the constructor, which wraps every result of the
        finder, checks only in part. Scans the offsets, not the values.

        Raises
        ------
        ValueError
            For fields of different lengths or offsets that do not start at 0, decrease or
            end elsewhere than the fields.
        """
        first = self.FIELDS[0]
        length = len(getattr(self, first))
        for name in self.FIELDS:
            shape = np.shape(getattr(self, name))
            if len(shape) != 1:
                raise ValueError(f"{self.WHAT}: field {name!r} must be one-dimensional, got "
                                 f"shape {shape}")
            if shape[0] != length:
                raise ValueError(f"{self.WHAT}: field {name!r} has {shape[0]} entries but "
                                 f"{first} has {length}")
        _check_offsets(_to_host(self.offsets), length, self.WHAT)

    def to_awkward(self) -> ak.Array:
        """Jagged awkward array of records, one list per event, in host memory of its own:
        it stays valid when this batch's arrays are reused (results of ``out=`` calls).

        Raises
        ------
        ValueError
            For a batch whose offsets do not cut its fields (see :meth:`check_structure`).
        """
        self.check_structure()
        offsets = ak.index.Index64(_to_host(self.offsets).astype(np.int64))
        content = ak.contents.RecordArray(
            [ak.contents.NumpyArray(np.array(_to_host(a))) for a in
             self._field_arrays().values()],
            list(self.FIELDS),
        )
        return ak.Array(ak.contents.ListOffsetArray(offsets, content))

    @classmethod
    def _fields_from_awkward(cls, array: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        array = ak.Array(array)
        missing_events = np.flatnonzero(ak.to_numpy(ak.is_none(array, axis=0)))
        if missing_events.size:  # an option type's None: its count would be garbage
            raise ValueError(f"{cls.WHAT}: event {missing_events[0]} is None, not a list "
                             f"(an event without {cls.WHAT} is an empty list)")
        array = ak.drop_none(array, axis=0)  # the events' option type, holding no None
        layout = array.layout
        content = getattr(layout, "content", None)  # none in a regular numeric array
        if isinstance(layout, ak.contents.EmptyArray) or (
                array.ndim == 2 and isinstance(content, ak.contents.EmptyArray)):
            # No event, or events that never held a record (JSON or Python lists of empty
            # lists): no field is known, and none is needed.
            offsets = np.zeros(len(array) + 1, dtype=np.int64)
            return offsets, {name: np.zeros(0, np.float64 if name in cls.FLOAT_FIELDS
                                            else np.int64) for name in cls.FIELDS}
        if array.ndim != 2:
            raise ValueError(
                f"{cls.WHAT}: expected one list of records per event, got type {array.type}"
            )
        names = set(ak.fields(array))
        missing = [name for name in cls.FIELDS if name not in names]
        if missing:
            raise ValueError(f"{cls.WHAT}: awkward array lacks field(s) {', '.join(missing)}")
        counts = ak.to_numpy(ak.num(array, axis=1))
        offsets = offsets_from_counts(counts)
        fields = {}
        for name in cls.FIELDS:
            flat = ak.flatten(array[name], axis=1)
            missing_values = np.flatnonzero(ak.to_numpy(ak.is_none(flat, axis=0)))
            if missing_values.size:  # to_numpy would make them NaN, reported as such
                raise ValueError(f"{cls.WHAT}: field {name!r} is None (a missing value) "
                                 f"{cls._located(offsets, int(missing_values[0]))}")
            try:
                fields[name] = ak.to_numpy(flat)
            except (TypeError, ValueError):  # a union with text: awkward names no field
                raise ValueError(f"{cls.WHAT}: field {name!r} must hold numbers, got type "
                                 f"{flat.type.content}") from None
        return offsets, fields

    def event_slice(self, start: int, stop: int) -> dict[str, Any]:
        """Fields and offsets of events ``start:stop`` (views where possible).

        Raises
        ------
        ValueError
            Unless ``0 <= start <= stop <= n_events`` are integers (no negative or reversed
            ranges).
        """
        _check_event_range(start, stop, self.n_events, self.WHAT)
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        fields = {name: getattr(self, name)[lo:hi] for name in self.FIELDS}
        return {"offsets": self.offsets[start : stop + 1] - lo, **fields}

    def select_events(self: _J, start: int, stop: int) -> _J:  # noqa: PYI019 (Self: 3.11)
        """Events ``start:stop`` as a new batch (views of these arrays; a
        :class:`VertexBatch` keeps their weights).

        Raises
        ------
        ValueError
            Unless ``0 <= start <= stop <= n_events`` are integers.
        """
        return type(self)(**self.event_slice(start, stop))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TrackBatch(_Jagged):
    """VELO track states of many events.

    Each track is a straight line: reference point ``(x, y, z)`` [mm], slopes ``tx = dx/dz``
    and ``ty = dy/dz``, and the covariance of ``(x, y, tx, ty)`` at ``z`` (diagonal and the
    ``x–tx``, ``y–ty`` correlations; mm², mm, dimensionless).

    Build one with :meth:`from_arrays` or :meth:`from_awkward`, which validate the input;
    :meth:`from_buffers` and the constructor check its structure only (types and lengths).

    Raises
    ------
    ValueError
        On construction, for offsets of other than integers, not starting at 0 or not ending
        at the fields' length, or a field of other than floats.
    """

    FIELDS: ClassVar[tuple[str, ...]] = TRACK_FIELDS
    FLOAT_FIELDS: ClassVar[frozenset[str]] = frozenset(TRACK_FIELDS)
    WHAT: ClassVar[str] = "tracks"
    ITEM: ClassVar[str] = "track"

    offsets: Any
    x: Any
    y: Any
    z: Any
    tx: Any
    ty: Any
    cov_xx: Any
    cov_yy: Any
    cov_xtx: Any
    cov_yty: Any
    cov_txtx: Any
    cov_tyty: Any

    @property
    def n_tracks(self) -> int:
        """Tracks in all events together."""
        return len(self.x)

    def _repr_details(self) -> str:
        return f", {np.dtype(self.x.dtype).name} states"

    @classmethod
    def from_buffers(cls, offsets: Any, **fields: Any) -> TrackBatch:
        """Wrap the caller's own arrays (numpy or CuPy) without copying or scanning them.

        For hot loops: only the structure is checked (every field present, one-dimensional,
        as long as ``offsets[-1]``), not the values; a track with a NaN or infinite state then
        counts as unusable rather than raising, and offsets that run backwards are refused by
        the finder (a ValueError naming the event). Use :meth:`from_arrays` to have values checked.

        Parameters
        ----------
        offsets : array of int, shape (n_events + 1,)
            Start of each event's tracks, non-decreasing, ``offsets[0] == 0``.
        **fields : array of float, shape (offsets[-1],)
            One array per name in :data:`TRACK_FIELDS`. float64 avoids a conversion, and so
            does float32 on the CPU when every field is float32.

        Raises
        ------
        ValueError
            For a missing or unknown field, a field of the wrong shape or of other than
            floats, or a masked array (whose mask the kernels would not see), offsets of other
            than integers, or bad end offsets.
        """
        missing = [name for name in cls.FIELDS if name not in fields]
        unknown = [name for name in fields if name not in cls.FIELDS]
        if missing or unknown:
            known = ", ".join(cls.FIELDS)
            problems = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown field(s) {', '.join(unknown)} (the fields are {known})"]
                if unknown else [])
            raise ValueError(f"tracks: {'; '.join(problems)}")
        return cls(offsets=offsets, **fields)  # the structure is checked on construction

    def __post_init__(self) -> None:
        # The kernels index the fields by the offsets: however the batch is built (the
        # constructor too), its structure is checked, not its values (from_arrays does that).
        offsets = self.offsets
        if getattr(offsets, "ndim", None) != 1 or len(offsets) == 0:
            got = (f"{offsets.ndim}-d of {offsets.size}" if hasattr(offsets, "ndim")
                   else type(offsets).__name__)
            raise ValueError("tracks: offsets must be a non-empty 1-d array (numpy or CuPy), "
                             f"got {got}")
        # Types only (no scan): float offsets were truncated, text fields parsed as numbers.
        if getattr(offsets.dtype, "kind", None) not in ("i", "u"):
            raise ValueError(f"tracks: offsets must be integers, got {offsets.dtype}")
        for name in self.FIELDS:
            array = getattr(self, name)
            # No scan of the mask: any masked array. ValueError, as for a field's other faults.
            if isinstance(array, np.ma.MaskedArray):
                raise ValueError(  # noqa: TRY004
                    f"tracks: field {name!r} is a masked array, whose mask the kernels would "
                    "not see: fill it first (.filled(np.nan) makes the masked tracks unusable)")
            if getattr(getattr(array, "dtype", None), "kind", None) != "f":
                raise ValueError(f"tracks: field {name!r} must hold floats, got "
                                 f"{getattr(array, 'dtype', type(array).__name__)}")
        # Both ends of CuPy offsets in one copy from the device (each copy waits for it).
        cupy_offsets = _array_module(offsets) is not np
        ends = _to_host(offsets[np.array([0, -1])]) if cupy_offsets else offsets
        first, length = int(ends[0]), int(ends[-1])
        if first != 0:
            raise ValueError(f"tracks: offsets must start at 0, got {first}")
        for name in self.FIELDS:
            shape = getattr(self, name).shape
            if shape != (length,):
                raise ValueError(f"tracks: field {name!r} must have shape ({length},) to match "
                                 f"offsets[-1], got {shape}")

    def to_host(self) -> TrackBatch:
        """This batch with numpy arrays (arrays on a GPU are copied to the host)."""
        return TrackBatch(
            offsets=_to_host(self.offsets),
            **{name: _to_host(a) for name, a in self._field_arrays().items()},
        )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MCVertices(_Jagged):
    """True primary vertices of many events.

    ``n_reconstructible`` counts the vertex's tracks that the detector model reconstructed
    (the PV checker's notion of reconstructible tracks).
    """

    FIELDS: ClassVar[tuple[str, ...]] = MC_VERTEX_FIELDS
    FLOAT_FIELDS: ClassVar[frozenset[str]] = frozenset({"x", "y", "z"})
    WHAT: ClassVar[str] = "MC vertices"
    ITEM: ClassVar[str] = "MC vertex"

    offsets: Any
    x: Any
    y: Any
    z: Any
    n_reconstructible: Any

    @property
    def n_vertices(self) -> int:
        """MC PVs in all events together."""
        return len(self.x)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MCTruth:
    """Monte Carlo truth of a sample.

    Attributes
    ----------
    vertices : MCVertices
        The true PVs of every event.
    track_mc_pv : numpy.ndarray
        For every track of the matching :class:`TrackBatch` (same flat order), the index
        of its MC PV within the event, or −1 for ghosts and daughters of displaced decays.
    """

    vertices: MCVertices
    track_mc_pv: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.vertices, MCVertices):
            raise TypeError(f"MC truth: vertices must be MCVertices, got "
                            f"{type(self.vertices).__name__}")
        labels = np.asarray(self.track_mc_pv)
        if labels.ndim != 1:
            raise ValueError("MC truth: track_mc_pv must be one-dimensional")
        if labels.size and labels.dtype.kind not in "iu":  # 0.5 was truncated when written
            raise ValueError(f"MC truth: track_mc_pv must be integers, got {labels.dtype}")
        # The vertices' values too, however they were built (a handful per event): the PV
        # checker cannot match a NaN position, and a file written with one cannot be read.
        MCVertices.from_arrays(offsets=self.vertices.offsets, **self.vertices._field_arrays())

    @property
    def n_events(self) -> int:
        """Events described."""
        return self.vertices.n_events

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return (f"MCTruth({self.n_events} events, {int(self.vertices.offsets[-1])} MC vertices, "
                f"{len(self.track_mc_pv)} tracks)")

    def check_matches(self, tracks: TrackBatch) -> None:
        """Raise ``ValueError`` unless this truth describes ``tracks`` event by event."""
        if tracks.n_events != self.n_events:
            raise ValueError(
                f"MC truth has {self.n_events} events but the tracks have {tracks.n_events}"
            )
        if len(self.track_mc_pv) != tracks.n_tracks:
            raise ValueError(
                f"MC truth labels {len(self.track_mc_pv)} tracks but the batch has {tracks.n_tracks}"
            )
        self.check_labels(_to_host(tracks.offsets))

    def check_labels(self, track_offsets: np.ndarray) -> None:
        """Check that every track points to an MC PV of its event or to none (−1).

        Parameters
        ----------
        track_offsets : numpy.ndarray of int
            Where each event's tracks start in :attr:`track_mc_pv` (``n_events + 1``).

        Raises
        ------
        ValueError
            Naming the first track, its event and the MC PV it points to that does not exist,
            or for offsets that do not cut the labels into events.
        """
        labels = np.asarray(self.track_mc_pv)
        track_offsets = np.asarray(track_offsets)
        _check_offsets(track_offsets, labels.size, "tracks")  # wrapped buffers' are not scanned
        track_offsets = track_offsets.astype(np.int64, copy=False)  # np.repeat refuses uint64
        n_pvs = np.repeat(self.vertices.counts, np.diff(track_offsets))
        bad = np.flatnonzero((labels < -1) | (labels >= n_pvs))
        if bad.size:
            raise ValueError(f"MC truth: the track {TrackBatch._located(track_offsets, bad[0])} "
                             f"points to MC PV {labels[bad[0]]}, which does not exist")

    def select_events(self, start: int, stop: int, tracks: TrackBatch) -> MCTruth:
        """The truth of events ``start:stop`` of ``tracks``.

        Parameters
        ----------
        start, stop : int
            The events, ``0 <= start <= stop <= n_events``.
        tracks : TrackBatch
            The batch this truth describes, whose offsets cut the track labels.

        Raises
        ------
        ValueError
            For a range outside the events, or ``tracks`` with other numbers of events or
            tracks than this truth labels.
        """
        if tracks.n_events != self.n_events or tracks.n_tracks != len(self.track_mc_pv):
            raise ValueError(f"MC truth of {self.n_events} events and {len(self.track_mc_pv)} "
                             f"tracks, but the tracks given are {tracks.n_events} events and "
                             f"{tracks.n_tracks} tracks: not the batch it describes")
        vertices = self.vertices.select_events(start, stop)  # checks the range
        lo, hi = int(tracks.offsets[start]), int(tracks.offsets[stop])
        return MCTruth(vertices, self.track_mc_pv[lo:hi])


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class VertexBatch(_Jagged):
    """Reconstructed primary vertices of many events.

    Per vertex: position [mm], the six independent terms of its 3×3 covariance [mm²],
    ``chi2``, ``ndof = 2 Σw − 3`` and the weighted number of tracks ``n_tracks = Σw``.

    The track–vertex association is kept as weights: vertex ``v`` of event ``e`` has one
    weight for each of the event's input tracks, ``weights[weight_offsets[v]:weight_offsets[v+1]]``
    (in input track order; 0 for tracks it does not use). ``weights`` is ``None`` when the
    batch was built without them.
    """

    FIELDS: ClassVar[tuple[str, ...]] = VERTEX_FIELDS
    FLOAT_FIELDS: ClassVar[frozenset[str]] = frozenset(VERTEX_FIELDS)
    WHAT: ClassVar[str] = "vertices"
    ITEM: ClassVar[str] = "vertex"

    offsets: Any
    x: Any
    y: Any
    z: Any
    cov_xx: Any
    cov_xy: Any
    cov_yy: Any
    cov_xz: Any
    cov_yz: Any
    cov_zz: Any
    chi2: Any
    ndof: Any
    n_tracks: Any
    weights: Any = None
    weight_offsets: Any = None

    @property
    def n_vertices(self) -> int:
        """Vertices in all events together."""
        return len(self.x)

    def _repr_details(self) -> str:
        return ", with weights" if self.weights is not None else ""

    def event_slice(self, start: int, stop: int) -> dict[str, Any]:
        """Fields, offsets and (when the batch has them) weights of events ``start:stop``
        (views where possible).

        Raises
        ------
        ValueError
            Unless ``0 <= start <= stop <= n_events`` are integers (no negative or reversed
            ranges).
        """
        sliced = super().event_slice(start, stop)
        if self.weights is not None:
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            first, last = int(self.weight_offsets[lo]), int(self.weight_offsets[hi])
            sliced["weights"] = self.weights[first:last]
            sliced["weight_offsets"] = self.weight_offsets[lo : hi + 1] - first
        return sliced

    @classmethod
    def from_arrays(
        cls,
        *,
        counts: Any = None,
        offsets: Any = None,
        weights: Any = None,
        weight_counts: Any = None,
        **fields: Any,
    ) -> VertexBatch:
        """Validate flat per-vertex arrays and build the batch.

        Parameters
        ----------
        counts, offsets : array of int
            Vertices per event, or the events' boundaries in the arrays (give one).
        weights : array of float, optional
            Every vertex's weights, one after the other (with ``weight_counts``).
        weight_counts : array of int, optional
            How many weights each vertex has (its event's input tracks).
        **fields : array of float
            One flat array per field of :data:`VERTEX_FIELDS`.

        Raises
        ------
        ValueError
            Naming the field for a missing one, a wrong length or a non-finite value; for
            inconsistent counts or offsets, and weights given without their counts (or the
            counts without weights) or not matching them; naming the vertex and event for a
            weight outside [0, 1] (NaN too), or for vertices of one event with different
            numbers of weights (each has one per input track of its event).
        """
        offsets = cls._offsets_from(counts, offsets)
        checked = cls._validated_fields(offsets, fields)
        weight_offsets = None
        if (weights is None) != (weight_counts is None):
            raise ValueError("vertices: give weights= and weight_counts= together")
        if weights is not None:
            weights = np.asarray(_to_host(weights))
            if weights.ndim != 1 or weights.dtype.kind not in "iuf":
                raise ValueError(f"vertices: weights must be one flat array of real numbers, "
                                 f"got {weights.dtype} of shape {weights.shape}")
            weights = weights.astype(np.float64, copy=False)
            weight_offsets = offsets_from_counts(weight_counts, "vertices weight_counts")
            if len(weight_offsets) != len(checked["x"]) + 1:
                raise ValueError("vertices: weight_counts needs one entry per vertex")
            _check_offsets(weight_offsets, weights.size, "vertices weight", lists="vertex",
                           values="the weights")
            _check_weights(offsets, weight_offsets, weights)
        return cls(offsets=offsets, weights=weights, weight_offsets=weight_offsets, **checked)

    def check_structure(self, weights: bool = True) -> None:
        """Check the structure of the fields (see :meth:`_Jagged.check_structure`) and, with
        ``weights`` when the batch has them, of the weights: one row per vertex, cut by
        ``weight_offsets``. Scans the offsets, not the values.

        Raises
        ------
        ValueError
            Naming what does not fit.
        """
        super().check_structure()
        if not weights or self.weights is None:
            return
        weight_offsets = _to_host(self.weight_offsets)
        if len(weight_offsets) != self.n_vertices + 1:
            raise ValueError("vertices: weight_offsets needs one entry per vertex and one")
        _check_offsets(weight_offsets, len(self.weights), "vertices weight", lists="vertex",
                       values="the weights")

    def to_awkward(self) -> ak.Array:
        """Jagged records per event; with weights, each vertex gets a ``weights`` list. In
        host memory of its own, valid when this batch's arrays are reused.

        Raises
        ------
        ValueError
            For a batch whose offsets do not cut its fields or weights (see
            :meth:`check_structure`).
        """
        array = super().to_awkward()
        if self.weights is None:
            return array
        per_vertex = jagged_array(_to_host(self.weight_offsets, copy=True),
                                  _to_host(self.weights, copy=True))
        per_event = jagged_array(_to_host(self.offsets, copy=True), per_vertex)
        return ak.with_field(array, per_event, "weights")

    @classmethod
    def from_awkward(cls, array: Any) -> VertexBatch:
        """The inverse of :meth:`to_awkward`: per-event vertex records, with their
        ``weights`` when the records hold them.

        Parameters
        ----------
        array : awkward.Array or array-like
            One list of vertex records per event, each with a list of ``weights`` or none.

        Raises
        ------
        ValueError
            As :meth:`_Jagged.from_awkward`, and naming the vertex and event for weights that
            are not a list of numbers per vertex or hold a None.
        """
        offsets, fields = cls._fields_from_awkward(array)
        array = ak.Array(array)
        if "weights" in ak.fields(array):
            per_vertex = ak.flatten(array["weights"], axis=1)
            if per_vertex.ndim != 2:
                raise ValueError(f"vertices: weights must be one list of numbers per vertex, "
                                 f"got type {array['weights'].type}")
            missing = np.flatnonzero(ak.to_numpy(ak.is_none(per_vertex, axis=0)))
            if missing.size:  # its count would be garbage
                event = _event_of(offsets, int(missing[0]))
                raise ValueError(f"vertices: the weights of vertex {missing[0] - offsets[event]}"
                                 f" in event {event} are None, not a list")
            weight_counts = ak.to_numpy(ak.num(per_vertex, axis=1))
            weights = ak.flatten(per_vertex, axis=1)
            missing = np.flatnonzero(ak.to_numpy(ak.is_none(weights, axis=0)))
            if missing.size:  # to_numpy would make it NaN, reported as such
                vertex = _event_of(offsets_from_counts(weight_counts), int(missing[0]))
                event = _event_of(offsets, vertex)
                raise ValueError(f"vertices: a weight of vertex {vertex - offsets[event]} in "
                                 f"event {event} is None (a missing value)")
            return cls.from_arrays(offsets=offsets, weights=ak.to_numpy(weights),
                                   weight_counts=weight_counts, **fields)
        return cls.from_arrays(offsets=offsets, **fields)

    def _mapped(self, function: Any) -> VertexBatch:
        def apply(array: Any) -> Any:
            return None if array is None else function(array)

        return VertexBatch(
            offsets=function(self.offsets),
            weights=apply(self.weights),
            weight_offsets=apply(self.weight_offsets),
            **{name: function(a) for name, a in self._field_arrays().items()},
        )

    def to_host(self, copy: bool = False) -> VertexBatch:
        """The batch with numpy arrays (copied from the GPU; from host memory when ``copy``)."""
        return self._mapped(lambda array: _to_host(array, copy))

    def copy(self) -> VertexBatch:
        """A batch that owns its arrays, on the same device (to keep a result of
        ``PVFinder(..., out=...)`` beyond the next call)."""
        return self._mapped(lambda array: array.copy())

    @classmethod
    def concatenate(cls, batches: Iterable[VertexBatch]) -> VertexBatch:
        """Join batches of consecutive events into one (all with weights or all without).

        The result owns new arrays, also from a single batch: joining results of
        ``PVFinder(..., out=...)`` keeps them beyond the next call.

        Raises
        ------
        ValueError
            For no batch at all, or batches some of which have weights and some not.
        TypeError
            For a batch that is not a VertexBatch.
        """
        batches = list(batches)
        strays = [type(b).__name__ for b in batches if not isinstance(b, VertexBatch)]
        if strays:
            raise TypeError(f"vertices: only VertexBatch objects concatenate, got {strays[0]}")
        if len(batches) == 1:
            return batches[0].copy()
        if not batches:
            raise ValueError("vertices: nothing to concatenate")
        xp = _array_module(batches[0].x)

        def stitched(offsets_list: list[Any]) -> Any:
            # As int64: unsigned offsets plus an int64 shift are floats.
            offsets_list = [o.astype(np.int64, copy=False) for o in offsets_list]
            shifts = np.cumsum([0] + [int(o[-1]) for o in offsets_list[:-1]])
            return xp.concatenate(
                [offsets_list[0][:1]] + [o[1:] + s for o, s in zip(offsets_list, shifts)]
            )

        with_weights = {b.weights is not None for b in batches}
        if len(with_weights) > 1:
            raise ValueError("vertices: cannot concatenate batches with weights and batches "
                             "without")
        with_weights = with_weights.pop()
        fields = {name: xp.concatenate([getattr(b, name) for b in batches]) for name in cls.FIELDS}
        return cls(
            offsets=stitched([b.offsets for b in batches]),
            weights=xp.concatenate([b.weights for b in batches]) if with_weights else None,
            weight_offsets=stitched([b.weight_offsets for b in batches]) if with_weights else None,
            **fields,
        )

    @property
    def sigma_z(self) -> np.ndarray:
        """Uncertainty of each vertex's z, ``sqrt(cov_zz)`` (mm, host array)."""
        return np.sqrt(_to_host(self.cov_zz))


def as_track_batch(tracks: Any) -> TrackBatch:
    """Accept a :class:`TrackBatch`, an awkward array of track records (one list of records
    per event, or one record of lists per event as uproot's ``tree.arrays()`` gives; other
    fields are ignored), a mapping of flat arrays with ``counts`` or ``offsets`` (see
    :meth:`TrackBatch.from_arrays`), or a mapping without them holding one list per event for
    each field (uproot's ``tree.arrays(how=dict)`` with either library; lists of lists; 2-d
    arrays; other keys are ignored).

    Raises
    ------
    TypeError
        For anything else, and for an uproot TTree or branches, or Dask collections, not yet
        read.
    ValueError
        For a missing field, fields of different lengths (per event), or counts or offsets
        that do not match them.
    """
    if isinstance(tracks, TrackBatch):
        return tracks
    _refuse_unread(tracks, "tracks")
    if isinstance(tracks, ak.Array):
        if tracks.ndim == 1 and tracks.fields:  # a record of lists per event: tree.arrays()
            return TrackBatch.from_awkward(_zipped_lists(
                {name: tracks[name] for name in tracks.fields}))
        return TrackBatch.from_awkward(tracks)
    if isinstance(tracks, Mapping):
        if "counts" not in tracks and "offsets" not in tracks:
            return TrackBatch.from_awkward(_zipped_lists(tracks))
        jagged = [name for name in TRACK_FIELDS
                  if isinstance(tracks.get(name), ak.Array) and tracks[name].ndim > 1]
        if jagged:
            raise ValueError(f"tracks: {', '.join(jagged)} are lists per event, which carry "
                             "their own counts: give either those or flat arrays with counts "
                             "or offsets")
        return TrackBatch.from_arrays(**tracks)
    raise TypeError(
        "tracks must be a TrackBatch, an awkward array of track records or a mapping of "
        f"arrays, got {type(tracks).__name__}"
    )


def _zipped_lists(tracks: Mapping[str, Any]) -> ak.Array:
    """Records from one list per event for each track field (awkward arrays, lists of lists,
    2-d numpy arrays, numpy arrays of per-event arrays as uproot's ``library="np"`` gives),
    every field with the same list lengths: zipping would broadcast a number per event, or
    per batch, to every track."""
    missing = [name for name in TRACK_FIELDS if name not in tracks]
    if missing:
        raise ValueError(f"tracks: missing field(s) {', '.join(missing)}")
    fields: dict[str, ak.Array] = {}
    for name in TRACK_FIELDS:
        _refuse_unread(tracks[name], f"tracks: field {name!r}")
        try:
            field = _as_lists(tracks[name])
        except (TypeError, ValueError):  # a number, or lists of things other than numbers
            field = None
        if field is None or field.ndim != 2:
            raise ValueError(f"tracks: field {name!r} must be a list per event like the others "
                             "(flat arrays need counts or offsets), got "
                             f"{getattr(field, 'type', type(tracks[name]).__name__)}")
        missing_events = np.flatnonzero(ak.to_numpy(ak.is_none(field, axis=0)))
        if missing_events.size:
            raise ValueError(f"tracks: event {missing_events[0]} of field {name!r} is None, "
                             "not a list (an event without tracks is an empty list)")
        fields[name] = field
    first, *others = TRACK_FIELDS
    counts = ak.to_numpy(ak.num(fields[first], axis=1))
    for name in others:
        these = ak.to_numpy(ak.num(fields[name], axis=1))
        if len(these) != len(counts):
            raise ValueError(f"tracks: field {name!r} has {len(these)} events but {first!r} "
                             f"has {len(counts)}")
        differ = np.flatnonzero(these != counts)
        if differ.size:
            raise ValueError(f"tracks: the lists of {name!r} differ in length from those of "
                             f"{first!r} (event {differ[0]}: {these[differ[0]]} against "
                             f"{counts[differ[0]]})")
    return ak.zip(fields)


def _as_lists(values: Any) -> ak.Array:
    """``values`` as an awkward array; a numpy array of arrays (an object array, which
    awkward refuses) joined into one list per entry, and no entries at all (``[]``, whose
    type awkward cannot know) as no lists."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        if any(entry is None for entry in values):  # awkward's path names the event
            return ak.from_iter(values.tolist())
        entries = [np.asarray(entry) for entry in values]
        if any(entry.ndim != 1 for entry in entries):
            raise ValueError("not one list per entry")
        counts = np.array([len(entry) for entry in entries], dtype=np.int64)
        flat = np.concatenate(entries) if entries else np.zeros(0)
        return ak.unflatten(flat, counts)
    if isinstance(values, np.ndarray) and not values.dtype.isnative:  # awkward refuses them
        values = values.astype(values.dtype.newbyteorder("="))
    array = ak.Array(values)
    if len(array) == 0 and array.ndim == 1:
        return ak.unflatten(np.zeros(0), np.zeros(0, dtype=np.int64))
    return array
