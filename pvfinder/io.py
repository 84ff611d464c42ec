"""ROOT files of tracks, truth and vertices (uproot), with errors that name the problem.

Tracks are read from any TTree whose branches hold one list of numbers per entry (event) for
each track field; a :class:`TrackSchema` says which branch holds which field. Reading goes in
chunks (:func:`iterate_tracks`), and :class:`VertexWriter` appends vertices chunk by chunk,
so memory stays bounded whatever the file size. Inputs may be URLs (``root://``,
``https://``, ``s3://``), read through fsspec as uproot reads them; outputs are local files.

Layout written by default (all lengths in mm):

* tree ``tracks``: the event identifiers given (a simulated sample's ``run_number``, uint32,
  and ``event_number``, uint64; else ``event_number``), ``n_tracks`` (counter) and one jagged
  branch per track field of :data:`pvfinder.events.TRACK_FIELDS`; with truth also ``mc_pv``
  (int32, index of the track's MC PV in the event, −1 for ghosts and displaced daughters).
* tree ``truth``: the same identifiers, ``n_pvs`` (counter) and jagged ``x``, ``y``, ``z``,
  ``n_reconstructible`` of the MC PVs.
* tree ``vertices``: the input's event identifiers (``run_number``, ``event_number`` when
  present, else ``event_number`` counting entries), ``n_vertices`` (counter) and jagged
  branches of :data:`pvfinder.events.VERTEX_FIELDS` (float64).
* tree ``vertex_weights`` (optional): the same identifiers; ``n_vertices`` (counter) and
  ``weight_counts`` (per vertex); ``n_weights`` (counter) and ``weights`` (each vertex's
  weights over the event's input tracks, concatenated); when the track counts are known
  also ``n_tracks`` (counter) and, per input track, ``vertex_index`` (the vertex giving it
  the largest weight, −1 for none) and ``weight`` (that weight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import stat
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import awkward as ak
import fsspec
import numpy as np
import uproot
from uproot.interpretation.jagged import AsJagged
from uproot.interpretation.numerical import Numerical

from ._settings import parse_settings
from .events import (
    _VARIANCE_FIELDS,
    MC_VERTEX_FIELDS,
    TRACK_FIELDS,
    VERTEX_FIELDS,
    MCTruth,
    MCVertices,
    TrackBatch,
    VertexBatch,
    _check_flag,
    _check_offsets,
    _check_weights,
    _event_of,
    _first_true,
    _is_count,
    _is_integer,
    jagged_array,
    offsets_from_counts,
)

__all__ = [
    "TrackChunk",
    "TrackSchema",
    "TrackSource",
    "VertexWriter",
    "check_vertex_file",
    "holds_weights",
    "input_identity",
    "inspect_tracks",
    "is_url",
    "iterate_tracks",
    "parse_step_size",
    "read_event_ids",
    "read_tracks",
    "read_truth",
    "read_vertices",
    "recorded_inputs",
    "track_association",
    "write_sample",
    "write_vertices",
]

TRACKS_TREE, TRUTH_TREE, VERTICES_TREE, WEIGHTS_TREE = (
    "tracks", "truth", "vertices", "vertex_weights")
# The event identifiers carried from tracks to vertices by default (TrackSchema.event_ids).
EVENT_ID_BRANCHES = ("run_number", "event_number")
# A vertex file's note of the inputs whose vertices it holds (a TObjString, a JSON list).
INPUTS_RECORD = "pvfinder_inputs"
COVARIANCE_FIELDS = tuple(name for name in TRACK_FIELDS if name.startswith("cov_"))
COMPRESSION = {"zlib": uproot.ZLIB(1), "lzma": uproot.LZMA(6), "zstd": uproot.ZSTD(1),
               "lz4": uproot.LZ4(1), "none": None}
DEFAULT_STEP_SIZE = "100 MB"
# The jagged branches of the tree of weights, with the counter each shares.
_WEIGHT_COUNTERS = {"weight_counts": "n_vertices", "weights": "n_weights",
                    "vertex_index": "n_tracks", "weight": "n_tracks"}
# Branches (and counters) of the files this module writes, which no event identifier may be named.
_SAMPLE_BRANCHES = frozenset({*TRACK_FIELDS, "mc_pv", "n_tracks", "x", "y", "z",
                              "n_reconstructible", "n_pvs"})
#: The identifier the events of an input without identifier branches get: their entry number.
_ENTRY_NUMBER = {"event_number": "uint64"}
_VERTEX_BRANCHES = frozenset({*VERTEX_FIELDS, "n_vertices", *_WEIGHT_COUNTERS,
                              *_WEIGHT_COUNTERS.values()})
# Vertex files hold float64 values that barely compress: zstd makes them 7 % smaller than lz4
# and takes twice as long to write them (50 000 events at ν = 7.6, 2-core VM, 2026-12-02:
# 30.7 MB in 0.40-0.62 s against 33.1 MB in 0.22-0.26 s; uncompressed, 33.3 MB in 0.19-0.25 s).
# The weights, mostly zeros, do compress: with them zstd is 19 % smaller than lz4 in about as
# long (10 000 events, 2026-12-03: 34.2 MB in 1.01-1.14 s against 42.5 MB in
# 0.89-1.12 s, most of it spent building the rows; uncompressed 153.9 MB).
# ROOT also recommends lz4 for files read again and again (its "analysis" setting).
DEFAULT_VERTEX_COMPRESSION = "lz4"
# Local files are memory-mapped: uproot's default (fsspec) source copies every byte range
# through a thread; mapping reads the same files in 17-45 % less time, depending on the codec
# (2-core VM, 2026-12-02).
LOCAL_SOURCE = uproot.source.file.MemmapSource
PathLike = str | os.PathLike


# A size with a unit, the forms uproot's step_size takes: "100 MB", "1.5 GiB", "1e2kB".
_SIZE_WITH_UNIT = re.compile(
    r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([kmgtpezy]?)(i?)b\s*", re.IGNORECASE)
_UNIT_POWERS = {prefix: power for power, prefix in enumerate(" kmgtpezy")}


def parse_step_size(step_size: int | str) -> int | str:
    """A chunk size as uproot takes it: a positive number of entries, or a size with its unit.

    Parameters
    ----------
    step_size : int or str
        Entries (``10000`` or ``"10000"``) or bytes of uncompressed data (``"100 MB"``,
        ``"1 GiB"``; at least one byte).

    Returns
    -------
    int or str
        The entries as an int, or the size string.

    Raises
    ------
    ValueError
        For anything else (``"1e4"``, ``0``, ``"0 MB"``, ``"1e-9 MB"``, ``"1e400 MB"``,
        ``"ten"``).
    """
    entries = step_size.strip() if isinstance(step_size, str) else step_size
    if isinstance(entries, str) and entries.isascii() and entries.isdigit():  # not "²"
        entries = int(entries)
    if _is_integer(entries):
        if entries > 0:
            return int(entries)
    elif isinstance(entries, str):
        size = _SIZE_WITH_UNIT.fullmatch(entries)
        if size:
            number, prefix, binary = size.groups()
            n_bytes = float(number) * (1024 if binary else 1000) ** _UNIT_POWERS[
                prefix.lower() or " "]
            if 1 <= n_bytes < math.inf:
                return step_size
    raise ValueError(f"step size must be a positive number of entries (10000) or a size with "
                     f"its unit ('100 MB'), got {step_size!r}")


# -- schema --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrackSchema:
    """Where the track fields live in a TTree.

    Parameters
    ----------
    tree : str
        Name of the TTree (one entry per event).
    branches : mapping of str to str
        Field of :data:`~pvfinder.events.TRACK_FIELDS` → branch name; fields not given are
        read from the branch of the same name. Each branch holds a list of numbers per entry.
    event_ids : tuple of str, or str
        Branches identifying the event (one integer per entry), carried over to the vertex
        file when the input has them; a single name may be given as a string (the schema
        holds a tuple).
    fill_missing_covariance : mapping of str to float, optional
        Covariance fields (``cov_*``) to fill with this value when the file lacks their
        branch. Only filled when given: by default a missing branch is an error.

    Raises
    ------
    ValueError
        For a tree or branch name that is not a string, an unknown field, or a fill of
        anything but a covariance field or with anything but a finite number.

    Examples
    --------
    >>> TrackSchema(tree="VeloTracks", branches={"x": "velo_x"}).branches["x"]
    'velo_x'
    """

    tree: str = TRACKS_TREE
    branches: Mapping[str, str] = dataclasses.field(default_factory=dict)
    event_ids: tuple[str, ...] | str = EVENT_ID_BRANCHES
    fill_missing_covariance: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        # ValueErrors, as for every schema mistake: schemas mostly come from files.
        if not isinstance(self.tree, str):
            raise ValueError(  # noqa: TRY004
                f"track schema: tree must be a name, got {self.tree!r}")
        if not (isinstance(self.branches, Mapping)
                and all(isinstance(name, str) for name in self.branches.values())):
            raise ValueError("track schema: branches must map fields to branch names, got "
                             f"{self.branches!r}")
        unknown = [str(name) for name in self.branches if name not in TRACK_FIELDS]
        if unknown:  # also a field given as a number, which join() refused with a TypeError
            raise ValueError(f"track schema: unknown field(s) {', '.join(unknown)}; "
                             f"fields are {', '.join(TRACK_FIELDS)}")
        # Plain dicts (not mapping proxies) so that the schema pickles to Dask workers.
        object.__setattr__(self, "branches", {name: str(self.branches.get(name, name))
                                              for name in TRACK_FIELDS})
        # One name given as a string means that branch, not its letters.
        event_ids = (self.event_ids,) if isinstance(self.event_ids, str) else self.event_ids
        if isinstance(event_ids, Iterable) and not isinstance(event_ids, Mapping):  # not its keys
            event_ids = tuple(event_ids)  # once: a generator is read only once
        if not (isinstance(event_ids, tuple) and all(isinstance(name, str) for name in event_ids)):
            raise ValueError(f"track schema: event_ids must be branch names, got {event_ids!r}")
        object.__setattr__(self, "event_ids", event_ids)
        if self.fill_missing_covariance is not None:
            object.__setattr__(self, "fill_missing_covariance",
                               _checked_fill(self.fill_missing_covariance))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> TrackSchema:
        """From ``{"tree": ..., "branches": {...}, "event_ids": [...],
        "fill_missing_covariance": {...}}`` (every key optional)."""
        if not isinstance(mapping, Mapping):  # a JSON list, a string
            raise TypeError(f"track schema: expected a table of keys (tree, branches, ...), "
                            f"got {type(mapping).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"track schema: unknown key(s) {', '.join(unknown)}; "
                             f"keys are {', '.join(sorted(known))}")
        return cls(**mapping)

    @classmethod
    def from_file(cls, path: PathLike) -> TrackSchema:
        """Read a schema from a TOML (``.toml``) or JSON file (keys of :meth:`from_mapping`).

        Raises
        ------
        FileNotFoundError
            When ``path`` does not exist.
        ValueError
            When it cannot be parsed, or holds an unknown key or an invalid value.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:  # a directory, no right to read, ...
            raise ValueError(f"{path}: cannot be read as a schema file ({error})") from None
        try:
            mapping = parse_settings(text, path)
        except ValueError as error:
            raise ValueError(f"{path}: not a valid schema file ({error})") from None
        try:
            return cls.from_mapping(mapping)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def _schema(schema: TrackSchema | None) -> TrackSchema:
    """``schema``, or this package's layout for None; anything else is a TypeError at the call
    (a tree name given as the schema failed only at the first chunk)."""
    if schema is None:
        return TrackSchema()
    if not isinstance(schema, TrackSchema):
        hint = (" (TrackSchema(tree=...) names the tree)" if isinstance(schema, str) else
                " (TrackSchema.from_mapping builds one)" if isinstance(schema, Mapping) else "")
        raise TypeError(f"schema must be a TrackSchema{hint}, got {type(schema).__name__}")
    return schema


def _checked_fill(fill: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(fill, Mapping):
        raise ValueError(  # noqa: TRY004 (a schema mistake, as TrackSchema's others)
            f"track schema: fill_missing_covariance must map covariance fields to values, got "
            f"{fill!r}")
    out = {}
    for name, value in fill.items():
        if name not in COVARIANCE_FIELDS:
            raise ValueError(f"track schema: only covariance fields may be filled "
                             f"({', '.join(COVARIANCE_FIELDS)}), got {name!r}")
        try:
            # True would be 1.0, as PVFinderConfig refuses it; "0" a number in a text
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"track schema: fill value of {name} must be a number, "
                             f"got {value!r}") from None
        if not math.isfinite(value) or (name in _VARIANCE_FIELDS and value < 0):
            raise ValueError(f"track schema: fill value of {name} must be finite"
                             f"{' and non-negative' if name in _VARIANCE_FIELDS else ''}, "
                             f"got {value}")
        out[name] = value
    return out


# -- where inputs live: local files and URLs ----------------------------------------------

# "scheme://...": a file that fsspec reads (root:// with fsspec-xrootd, https:// with aiohttp,
# s3:// with s3fs), as uproot takes it, also behind fsspec's chained protocols
# ("simplecache::https://..."). A one-letter scheme would be a Windows drive.
_URL = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]+::)*[A-Za-z][A-Za-z0-9+.-]+://")
# Local files in URL form, which uproot reads as local files too.
_LOCAL_URL = re.compile(r"(?:file|local)://", re.IGNORECASE)
# The user (and password) before a URL's host: "https://me:secret@host/..." keeps "https://".
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")


def is_url(name: PathLike) -> bool:
    """Whether an input is read through fsspec rather than from a local file.

    Parameters
    ----------
    name : str or path
        An input as given: ``root://host//data/run1.root``, ``https://...``, ``s3://...``,
        ``simplecache::https://...``, or a local path (also a ``file://`` URL; a
        ``pathlib.Path`` is always local).

    Returns
    -------
    bool
        True for a URL of any protocol but ``file://`` and ``local://``.
    """
    if isinstance(name, bytes):  # a path as the OS gives it
        name = os.fsdecode(name)
    return (isinstance(name, str) and _URL.match(name) is not None
            and _LOCAL_URL.match(name) is None)


def _input_name(name: PathLike) -> Path | str:
    """An input as this package keeps it: a URL as the string itself, a local file (also
    ``file://path``) as a Path. (Path would fold a URL's ``//``: ``root://host//f.root`` was
    read as ``root:/host/f.root``, in a local folder ``root:``.)"""
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if is_url(name):
        return name
    local = name.split("://", 1)[1] if isinstance(name, str) and _LOCAL_URL.match(name) else name
    if local == "":  # Path("") is the current directory
        raise ValueError(f"{name!r} names no file")
    return Path(local)


def input_identity(name: PathLike) -> str:
    """What makes two names one input, and what a vertex file records of its inputs.

    Parameters
    ----------
    name : str or path
        An input: a local path or a URL (see :func:`is_url`).

    Returns
    -------
    str
        For a local file, its absolute path with links followed. For a URL, the URL as
        fsspec spells it (``memory://d/a.root`` and ``memory:///d/a.root`` are one; a chained
        URL as given) without its query, which is taken for access parameters (a token, a
        signature and its expiry): no token is written into vertex files, and a rerun with
        a fresh one resumes (``--skip-existing``).
    """
    name = _input_name(name)
    if isinstance(name, Path):
        return str(name.resolve())
    base = "::".join(_links(name))
    if "::" in base:  # the outer filesystem's spelling would drop the chain
        return base
    try:
        filesystem, where = fsspec.core.url_to_fs(base)
    except Exception:  # noqa: BLE001 (a protocol not installed here: reading it says so)
        return base
    return filesystem.unstrip_protocol(where)


def _input_stem(name: PathLike) -> str:
    """The file name without its suffix, also of a URL (``run1`` of
    ``root://host//data/run1.root?authz=x`` and of ``zip://run1.root::file:///a.zip``)."""
    name = _input_name(name)
    if isinstance(name, Path):
        return name.stem
    # Of a chain, the first link that names a ROOT file (zip://member.root::...), else the last
    # (simplecache::https://host/run1.root).
    files = [link.rstrip("/").rpartition("/")[2] for link in _links(name)]
    file = next((file for file in files if file.lower().endswith(".root")), files[-1])
    return PurePosixPath(urllib.parse.unquote(file)).stem


def _links(url: str) -> list[str]:
    """The links of a URL, chained by ``::`` (one link unless chained), each without its
    query and the user and password of its address, which are for access too
    (``zip://run1.root::https://me:pw@host/a.zip?token=t`` → ``zip://run1.root``,
    ``https://host/a.zip``)."""
    return [_CREDENTIALS.sub(r"\1", link.partition("?")[0]) for link in url.split("::")]


def _local_output(path: PathLike) -> Path:
    """``path`` as a file to write on this machine; a URL is refused, uproot writes local
    files only."""
    name = _input_name(path)
    if isinstance(name, str):  # a URL: a value refused, not a wrong type
        raise ValueError(  # noqa: TRY004
            f"{path}: a URL; pvfinder writes files on this machine only (give a local path, "
            "and copy the file afterwards, e.g. with xrdcp)")
    return name


# -- opening files and checking trees ------------------------------------------------------


@contextlib.contextmanager
def _naming(path: PathLike) -> Iterator[None]:
    """A ``ValueError`` raised inside names ``path`` (a file, or ``file:tree``) first."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """What uproot raises inside on a damaged file (zlib, deserialization, value and other
    errors alike, and OSErrors without an errno: "expected Chunk of length 325") as a
    ``ValueError`` naming ``where`` (``file:tree``). The system's OSErrors (a disk, a
    permission) and MemoryError pass. From a URL, whose storage or network may be at fault
    as well, every error is such a ValueError, and not called damage."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as error:
        if is_url(where):
            raise ValueError(f"{where}: cannot be read ({_described(error)})") from None
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ValueError(f"{where}: damaged, cannot be read ({_described(error)})") from None


def _described(error: Exception) -> str:
    """``Type: message`` of an error met reading a file, on one line. uproot's
    DeserializationError says what went wrong in ``.message``, and then dumps the bytes it
    was reading; others say it all (an HTTP client's error: status, reason and URL)."""
    if isinstance(error, uproot.deserialization.DeserializationError):
        text = error.message
    else:
        text = str(error)
    message = " ".join(text.split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _check_root_header(path: Path | str, head: bytes, size: int | None) -> None:
    """A ROOT file starts with ``root`` and records its own length: catch the wrong kind of
    file and a truncated copy (``head``: its first 20 bytes, ``size``: its length, None when
    unknown, as from a server that does not say) before uproot fails somewhere in the
    middle."""
    if head[:4] != b"root":
        raise ValueError(f"{path}: not a ROOT file (it does not start with 'root')")
    if size is None:
        return
    version = int.from_bytes(head[4:8], "big")
    end = int.from_bytes(head[12:20] if version >= 1_000_000 else head[12:16], "big")
    if size < end:
        raise ValueError(f"{path}: truncated ROOT file ({size} bytes, but its header says {end})")


def _open(path: PathLike) -> Any:
    path = _input_name(path)
    if isinstance(path, str):
        return _open_url(path)
    kind = _not_a_regular_file(path)
    if kind is not None:  # a directory, /dev/null, a named pipe
        raise ValueError(f"{path}: {kind}, not a ROOT file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as file:
        _check_root_header(path, file.read(20), path.stat().st_size)
    return _uproot_open(path, LOCAL_SOURCE)


def _uproot_open(path: Path | str, handler: Any) -> Any:
    try:
        return uproot.open(path, handler=handler)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 (uproot raises many kinds for damaged files)
        # Past the header check, a URL's failure other than of its contents is the storage's
        # or the network's (whose clients' errors are not all OSErrors).
        if isinstance(path, str) and not isinstance(
                error, uproot.deserialization.DeserializationError):
            raise OSError(f"{path}: cannot be read ({_described(error)})") from None
        raise ValueError(f"{path}: not a readable ROOT file ({_described(error)})") from None


def _open_url(url: str) -> Any:
    """Open a remote file through fsspec (uproot's own way), checked as a local one is.

    A protocol that cannot be read here, or a malformed URL, is a ValueError; a missing file
    a FileNotFoundError; any other failure of the storage or the network (a refusal such as
    403, a dropped connection) an OSError."""
    try:
        filesystem, where = fsspec.core.url_to_fs(url)  # of zip::https, reads the archive
        # Only the header: open() would read fsspec's first block (5 MB) ahead.
        head = filesystem.cat_file(where, start=0, end=20)
        size = filesystem.size(where)
    except ImportError as error:  # fsspec knows the protocol, its package is missing
        raise ValueError(f"{url}: cannot be read here: {error}") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 (each client raises its own kinds)
        if _missing(error):
            raise FileNotFoundError(f"{url}: no such file") from None
        if isinstance(error, ValueError):  # an unknown protocol ("Protocol not known")
            raise ValueError(  # noqa: TRY004 (a value refused, passed on as such)
                f"{url}: cannot be read ({_described(error)})") from None
        failure = error.__cause__ if isinstance(error, FileNotFoundError) else error
        raise OSError(f"{url}: cannot be read ({_described(failure)})") from None
    _check_root_header(url, head, size)
    return _uproot_open(url, None)  # uproot's default: fsspec


def _missing(error: Exception) -> bool:
    """Whether fsspec says a file is not there. Its HTTP client raises FileNotFoundError for
    any failure of a request, with the real one as its cause: only a 404 (or a missing key
    of a store) means missing, a refused connection or a 403 does not."""
    if not isinstance(error, FileNotFoundError):
        return False
    cause = error.__cause__
    return cause is None or isinstance(cause, LookupError) or getattr(cause, "status", None) == 404


_TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")


def _holds(file: Any, path: Path | str, name: str) -> bool:
    """Whether ``file`` (read from ``path``) has an object at ``name``; a damaged folder on
    the way is an error naming it."""
    with _reading(f"{path}:{name}"):
        try:
            return name in file
        except AttributeError:  # a path through a TTree ("tracks/x"): uproot seeks a key in it
            return False


def _tree(file: Any, path: Path | str, name: str) -> Any:
    if not _holds(file, path, name):
        with _reading(str(path)):  # name the trees, also in folders ("Dir/tracks")
            trees = ", ".join(sorted({key.split(";")[0] for key, kind in
                                      file.classnames().items() if kind in _TREE_CLASSES}))
        raise ValueError(f"{path}: no tree {name!r} (trees in the file: {trees or 'none'})")
    with _reading(f"{path}:{name}"):
        kind = file.key(name).classname()  # from its key (classname_of reads the object)
        if kind in _TREE_CLASSES:
            return file[name]
    try:  # a class derived from TTree is a tree too
        found = file[name]
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 (a class uproot cannot read is no tree, not damage)
        found = None
    if not isinstance(found, uproot.TTree):  # a wrong file, not a wrong argument
        raise ValueError(f"{path}: {name!r} is a {kind}, not a TTree")  # noqa: TRY004
    return found


def _require_branches(tree: Any, where: str, names: Iterable[str], *, jagged: bool = True,
                      hint: str = "") -> None:
    """Every branch exists and holds numbers: a list per entry (``jagged``) or one integer."""
    names = list(names)
    present = set(tree.keys())
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(f"{where}: missing branch(es) {', '.join(missing)}{hint}")
    for name in names:
        interpretation = tree[name].interpretation
        if jagged:
            inner = interpretation.content if isinstance(interpretation, AsJagged) else None
            ok = _numbers(inner, "iuf")
            want = "a list of numbers per entry"
        else:
            ok = _numbers(interpretation, "iu")
            want = "one integer per entry"
        if not ok:
            raise ValueError(f"{where}: branch {name!r} holds {tree[name].typename!r}, "
                             f"not {want}{hint}")


def _numbers(interpretation: Any, kinds: str) -> bool:
    """Whether uproot reads ``interpretation`` as one number of these numpy ``kinds`` per item:
    as stored (``AsDtype``: plain numbers, a ``std::vector``'s) or unpacked from fewer bits
    (``Double32_t``, ``Float16_t``)."""
    return isinstance(interpretation, Numerical) and interpretation.to_dtype.shape == () and \
        interpretation.to_dtype.kind in kinds


def _flatten_jagged(arrays: Mapping[str, ak.Array], where: str, entry_start: int = 0
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shared offsets and flat values of jagged branches (numeric lists per entry, as
    :func:`_require_branches` checked), raising when two branches disagree on an entry."""
    offsets: np.ndarray | None = None
    first = ""
    flat = {}
    for name, array in arrays.items():
        layout = ak.to_layout(array)
        these = np.asarray(layout.offsets.data)
        values = np.asarray(layout.content.data)[these[0] : these[-1]]
        these = these - these[0]
        lengths = np.diff(these)
        damaged = np.flatnonzero(lengths < 0)  # lists cannot have negative lengths: bad bytes
        if damaged.size:
            entry = int(damaged[0])
            raise ValueError(f"{where}: branch {name!r} is damaged: its data give entry "
                             f"{entry_start + entry} {lengths[entry]} values")
        if offsets is None:
            offsets, counts, first = these, lengths, name
        elif not np.array_equal(offsets, these):
            if len(counts) != len(lengths):
                raise ValueError(f"{where}: branch {name!r} has {len(lengths)} entries but "
                                 f"{first!r} has {len(counts)}")
            entry = int(np.flatnonzero(counts != lengths)[0])
            raise ValueError(f"{where}: branch {name!r} has {lengths[entry]} values in entry "
                             f"{entry_start + entry} but branch {first!r} has {counts[entry]}")
        flat[name] = values
    if offsets is None:
        raise ValueError(f"{where}: no jagged branch to read")
    return offsets.astype(np.int64, copy=False), flat


# -- reading tracks ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrackChunk:
    """Consecutive entries of one tree of tracks.

    Attributes
    ----------
    tracks : TrackBatch
        The entries' tracks, one event per entry.
    event_ids : dict of str to numpy.ndarray
        The entries' identifiers (the schema's ``event_ids`` branches present in the file;
        ``event_number`` counting entries from 0 when it has none).
    path, tree : Path or str, str
        Where they were read: the file (a URL as a str) and the tree.
    entry_start, entry_stop : int
        Entry range in the tree.
    """

    tracks: TrackBatch
    event_ids: dict[str, np.ndarray]
    path: Path | str
    tree: str
    entry_start: int
    entry_stop: int

    @property
    def n_events(self) -> int:
        """Events in this chunk."""
        return self.entry_stop - self.entry_start


@dataclasses.dataclass(frozen=True)
class TrackSource:
    """A tree of tracks checked against a schema: which branch to read for each field.

    Get one from :func:`inspect_tracks`; it holds no open file, so it pickles to Dask
    workers, whose partitions it turns into :class:`TrackChunk` with :meth:`chunk`;
    :meth:`read_chunks` reads the file as inspected.

    Attributes
    ----------
    path : str
        The file (or its URL).
    tree : str
        The tree.
    n_entries : int
        Its number of entries.
    branches : dict of str to str
        Field → branch, for the fields read from the file.
    filled : dict of str to float
        Covariance fields filled with a constant because the file lacks them.
    event_ids : dict of str to str
        Event-identifier branches present in the tree, with their numpy dtype.
    """

    path: str
    tree: str
    n_entries: int
    branches: dict[str, str]
    filled: dict[str, float]
    event_ids: dict[str, str]

    @property
    def read_branches(self) -> list[str]:
        """Every branch to read: the fields' and the event identifiers'."""
        return [*self.branches.values(), *self.event_ids]

    @property
    def written_ids(self) -> dict[str, str]:
        """The identifier branches its vertices get, with their dtype: its own, or
        ``event_number`` counting its entries."""
        return self.event_ids or dict(_ENTRY_NUMBER)

    @property
    def where(self) -> str:
        """``file:tree``, the prefix of error messages."""
        return f"{self.path}:{self.tree}"

    def chunk(self, arrays: Mapping[str, Any], entry_start: int) -> TrackChunk:
        """Turn the arrays read for :attr:`read_branches` (entries from ``entry_start``) into
        a :class:`TrackChunk`.

        Raises
        ------
        ValueError
            Naming file, tree, branch and entry for branches of different lengths in an
            entry, or a non-finite state or negative variance.
        """
        jagged = {branch: arrays[branch] for branch in self.branches.values()}
        offsets, flat = _flatten_jagged(jagged, self.where, entry_start)
        fields = {field: flat[branch] for field, branch in self.branches.items()}
        for field, value in self.filled.items():
            # In the precision of the file's states, as floats where they are integers, and
            # in float64 where float32 cannot hold the value.
            dtype = np.result_type(fields["x"].dtype, np.float32)
            if abs(value) > float(np.finfo(dtype).max):
                dtype = np.dtype(np.float64)
            fields[field] = np.full(int(offsets[-1]), value, dtype=dtype)
        n_events = len(offsets) - 1
        ids = {name: ak.to_numpy(arrays[name]).astype(id_dtype, copy=False)
               for name, id_dtype in self.event_ids.items()}
        ids = ids or _entry_number_ids(entry_start, n_events)
        try:
            tracks = TrackBatch.from_arrays(offsets=offsets, **fields)
        except ValueError as error:
            raise self._located(error, fields, offsets, entry_start) from None
        return TrackChunk(tracks, ids, _input_name(self.path), self.tree, entry_start,
                          entry_start + n_events)

    def _located(self, error: ValueError, fields: dict[str, np.ndarray], offsets: np.ndarray,
                 entry_start: int) -> ValueError:
        """``error`` restated with the branch and entry of the first bad value."""
        for field, values in fields.items():
            bad = ~np.isfinite(values)
            if field in _VARIANCE_FIELDS:
                bad |= values < 0
            hits = np.flatnonzero(bad)
            if hits.size:
                index = int(hits[0])
                event = _event_of(offsets, index)
                origin = (f"branch {self.branches[field]!r}" if field in self.branches
                          else f"filled field {field!r}")
                return ValueError(
                    f"{self.where}: {origin} is {values[index]} in entry {entry_start + event} "
                    f"(track {index - offsets[event]} of that entry); track states must be "
                    "finite and variances non-negative")
        return ValueError(f"{self.where}: entries {entry_start}–{entry_start + len(offsets) - 2}"
                          f": {error}")

    def iterate(self, tree: Any, step_size: int | str = DEFAULT_STEP_SIZE
                ) -> Iterator[TrackChunk]:
        """Chunks of the open ``tree`` (uproot's ``iterate``), ``step_size`` entries or bytes
        (``"100 MB"``) at a time."""
        # zlib and friends release the GIL, and so does numpy's byte-swapping copy that
        # joins a branch's baskets: both run on every core, the joins a branch per thread.
        with ThreadPoolExecutor(usable_cores()) as executor:
            reading = tree.iterate(self.read_branches, step_size=step_size, how=dict,
                                   report=True, decompression_executor=executor,
                                   interpretation_executor=executor)
            start = 0
            while True:
                try:
                    arrays, report = next(reading)
                except StopIteration:
                    return
                except MemoryError:  # as in _reading and the Dask reader
                    raise
                except Exception as error:  # noqa: BLE001 (damaged baskets raise zlib, OS
                    # and uproot errors alike)
                    raise self.unreadable(start, error) from None
                start = report.tree_entry_stop
                yield self.chunk(arrays, report.tree_entry_start)

    def unreadable(self, start: int, error: Exception) -> ValueError:
        """The error of entries from ``start`` on that could not be read (damaged baskets),
        in the same words in this process and on a Dask worker."""
        return ValueError(f"{self.where}: cannot read the entries from {start} on "
                          f"({_described(error)})")

    def entry_steps(self, step_size: int | str = DEFAULT_STEP_SIZE) -> list[tuple[int, int]]:
        """The ``(start, stop)`` entry ranges :meth:`read_chunks` reads, ``step_size`` entries
        or bytes of the branches read at a time; one empty range for a tree without entries."""
        if isinstance(step_size, str):  # entries per step as uproot's iterate counts them
            with _open(self.path) as file:
                tree = _tree(file, self.path, self.tree)
                # The branches as expressions, as iterate takes them (a filter_name would
                # read "[" or "*" in a branch name as a pattern).
                step_size = tree.num_entries_for(step_size, self.read_branches)
        step = max(int(step_size), 1)
        return [(start, min(start + step, self.n_entries))
                for start in range(0, self.n_entries, step)] or [(0, 0)]

    def read_chunks(self, step_size: int | str = DEFAULT_STEP_SIZE) -> Iterator[TrackChunk]:
        """Open :attr:`path` again and read it in chunks as it was inspected, without
        checking it or warning of it again."""
        with _open(self.path) as file:
            yield from self.iterate(_tree(file, self.path, self.tree), step_size)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _track_source(file: Any, path: Path | str, schema: TrackSchema) -> TrackSource:
    tree = _tree(file, path, schema.tree)
    where = f"{path}:{schema.tree}"
    fill = schema.fill_missing_covariance or {}
    present = set(tree.keys())
    filled = {field: value for field, value in fill.items()
              if schema.branches[field] not in present}
    branches = {field: branch for field, branch in schema.branches.items()
                if field not in filled}
    hint = ("; name each field's branch in the track schema (--branch FIELD=BRANCH)"
            + ("" if fill else " or fill missing covariance terms (--fill-cov FIELD=VALUE)"))
    _require_branches(tree, where, branches.values(), hint=hint)
    id_names = [name for name in schema.event_ids if name in present]
    absent = [name for name in schema.event_ids if name not in present]
    if absent and schema.event_ids != EVENT_ID_BRANCHES:  # named by the user: a typo?
        integers = sorted(name for name in present
                          if _numbers(tree[name].interpretation, "iu"))
        carried = ", ".join(id_names) or "event_number counting the entries"
        # Warned from here for every reader alike (TrackSource.read_chunks does not come
        # here, so that reconstruct, which inspects each input first, warns once).
        warnings.warn(f"{where}: no event identifier branch {', '.join(absent)}; the "
                      f"vertices carry {carried} (integer branches with one value per "
                      f"event: {', '.join(integers) or 'none'})", stacklevel=1)
    _require_branches(tree, where, id_names, jagged=False,
                      hint="; event identifiers are optional: leave it out with a schema "
                           "whose event_ids do not name it (TrackSchema(event_ids=...), "
                           "--schema FILE)")
    event_ids = {name: str(tree[name].interpretation.to_dtype) for name in id_names}
    return TrackSource(str(path), schema.tree, int(tree.num_entries), branches, filled,
                       event_ids)


def inspect_tracks(path: PathLike, schema: TrackSchema | None = None) -> TrackSource:
    """Open ``path`` and check its tree of tracks against ``schema`` (default: our layout).

    Parameters
    ----------
    path : path or str
        ROOT file: a local path, or a URL that fsspec reads (``root://`` with
        fsspec-xrootd, ``https://`` with aiohttp, ``s3://`` with s3fs; see :func:`is_url`).
    schema : TrackSchema, optional
        Tree and branches to find (default: this package's layout).

    Returns
    -------
    TrackSource
        The checked input: file, tree, branches to read, entries and event identifiers
        found; it holds no open file.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, tree and branch: missing file, not a ROOT file or a truncated one,
        missing tree or branch, a branch that does not hold numbers per entry; a URL whose
        protocol this machine cannot read (the message names the package to install).
    OSError
        Naming the URL, when its storage or the network fails as it is opened (a refusal
        such as 403, a dropped connection); failures later, while reading, are ValueErrors
        naming URL, tree and entries.
    TypeError
        For a ``schema`` that is not a TrackSchema.
    """
    path = _input_name(path)
    with _open(path) as file:
        return _track_source(file, path, _schema(schema))


def iterate_tracks(paths: PathLike | Iterable[PathLike], schema: TrackSchema | None = None,
                   step_size: int | str = DEFAULT_STEP_SIZE) -> Iterator[TrackChunk]:
    """Read the tracks of one or more files in chunks, so that memory stays bounded.

    Parameters
    ----------
    paths : path or iterable of paths
        ROOT files, read one after the other: local paths or URLs (see
        :func:`inspect_tracks`).
    schema : TrackSchema, optional
        Tree and branches to read (default: this package's layout).
    step_size : int or str
        Entries per chunk, or a size such as ``"100 MB"`` (of uncompressed data).

    Returns
    -------
    iterator of TrackChunk
        Tracks and event identifiers of consecutive entries, with their file and entry range.

    Raises
    ------
    ValueError
        At the call, for a step size that is neither entries nor a size with its unit.
    TypeError
        At the call, for a ``schema`` that is not a TrackSchema.
    FileNotFoundError, ValueError
        While iterating, as :func:`inspect_tracks` when a file is reached, and naming the
        entry for unreadable data, branches of different lengths in an entry, non-finite
        states and negative variances.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    schema, step_size = _schema(schema), parse_step_size(step_size)
    if isinstance(paths, bytes):  # a path as the OS gives it, not a sequence of bytes
        paths = os.fsdecode(paths)
    one_path = isinstance(paths, (str, os.PathLike))  # not a sequence of its letters
    return _iterate_files([paths] if one_path else paths, schema, step_size)


def _iterate_files(paths: Iterable[PathLike], schema: TrackSchema, step_size: int | str
                   ) -> Iterator[TrackChunk]:
    """The chunks of :func:`iterate_tracks`, file after file."""
    for path in map(_input_name, paths):
        with _open(path) as file:
            source = _track_source(file, path, schema)
            yield from source.iterate(file[source.tree], step_size)


def read_tracks(path: PathLike, tree: str | None = None,
                schema: TrackSchema | None = None) -> TrackBatch:
    """Read every event's tracks from ``path`` at once.

    Parameters
    ----------
    path : path or str
        ROOT file: a local path or a URL (see :func:`inspect_tracks`).
    tree : str, optional
        Tree name, overriding the schema's.
    schema : TrackSchema, optional
        Tree and branches (default: this package's layout).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, tree, branch and entry of the problem (see :func:`iterate_tracks`).
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    TypeError
        For a ``schema`` that is not a TrackSchema.
    """
    schema = _schema(schema)
    if tree is not None:
        schema = dataclasses.replace(schema, tree=tree)
    path = _input_name(path)
    with _open(path) as file:
        source = _track_source(file, path, schema)
        chunks = list(source.iterate(file[source.tree], step_size=max(source.n_entries, 1)))
    if chunks:
        return chunks[0].tracks
    return TrackBatch.from_arrays(counts=np.zeros(0, np.int64),
                                  **{name: np.zeros(0) for name in TRACK_FIELDS})


# -- truth ---------------------------------------------------------------------------------


def _read_jagged(tree: Any, where: str, names: tuple[str, ...]
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _require_branches(tree, where, names)
    with _reading(where):
        arrays = tree.arrays(list(names), how=dict)
    return _flatten_jagged(arrays, where)


def read_truth(path: PathLike, tracks_tree: str = TRACKS_TREE) -> MCTruth | None:
    """Read the MC truth written by :func:`write_sample`, or ``None`` when the file has none.

    Parameters
    ----------
    path : path
        A file with the tree ``truth`` (the MC PVs of each event).
    tracks_tree : str
        The tree of tracks, whose branch ``mc_pv`` labels each track with its MC PV.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, tree and branch that are missing or malformed.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    path = _input_name(path)
    with _open(path) as file:
        if not _holds(file, path, TRUTH_TREE):
            return None
        where = f"{path}:{TRUTH_TREE}"
        offsets, flat = _read_jagged(_tree(file, path, TRUTH_TREE), where, MC_VERTEX_FIELDS)
        label_offsets, labels = _read_jagged(_tree(file, path, tracks_tree),
                                             f"{path}:{tracks_tree}", ("mc_pv",))
    where_labels = f"{path}:{tracks_tree}"
    if len(label_offsets) != len(offsets):
        raise ValueError(f"{where} has {len(offsets) - 1} entries but {where_labels} "
                         f"has {len(label_offsets) - 1}: not the truth of these tracks")
    if labels["mc_pv"].dtype.kind not in "iu":  # a cast would truncate them
        raise ValueError(f"{where_labels}: branch 'mc_pv' holds {labels['mc_pv'].dtype}, not "
                         "integers")
    with _naming(where):
        vertices = MCVertices.from_arrays(offsets=offsets, **flat)
    truth = MCTruth(vertices, labels["mc_pv"])  # as read: a cast to int32 could wrap them
    with _naming(where_labels):
        truth.check_labels(label_offsets)
    if truth.track_mc_pv.dtype == np.int32:  # as this module writes them
        return truth
    # Every label is now -1 or the index of one of its event's MC PVs.
    return MCTruth(vertices, truth.track_mc_pv.astype(np.int32))


# -- writing -------------------------------------------------------------------------------


def _compression(name: str) -> Any:
    if name not in COMPRESSION:
        raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSION)}")
    return COMPRESSION[name]


def _check_storable(batch: Any, fields: tuple[str, ...], dtype: Any) -> None:
    """Refuse a value of ``fields`` that would not be finite stored as ``dtype``, as the reader
    wants them (wrapped buffers and the constructors' batches are not scanned, and a cast to
    float32 makes a value beyond its range infinite): called before a file is touched."""
    for name in fields:
        values = np.asarray(getattr(batch, name))
        with np.errstate(over="ignore"):  # named below
            bad = _first_true(np, ~np.isfinite(values.astype(dtype, copy=False)))
        if bad is not None:
            value = values[bad]
            why = (f"beyond the range of {np.dtype(dtype)} (write with precision=numpy.float64)"
                   if np.isfinite(value) else "not a number the reader takes")
            raise ValueError(f"{batch.WHAT}: field {name!r} is {value} "
                             f"{batch._located(batch.offsets, bad)}: {why}")


def _jagged(batch: Any, fields: tuple[str, ...], dtype: Any) -> dict[str, ak.Array]:
    """``fields`` of ``batch`` as lists per event, stored as ``dtype`` (checked first by
    :func:`_check_storable`)."""
    return {name: jagged_array(batch.offsets, np.asarray(getattr(batch, name), dtype=dtype))
            for name in fields}


def _write_tree(file: Any, name: str, counter: str, jagged: dict[str, ak.Array],
                event_ids: dict[str, np.ndarray], events_per_basket: int) -> None:
    file.mktree(name, {**{k: a.dtype for k, a in event_ids.items()},
                       **{k: a.type for k, a in jagged.items()}},
                counter_name=lambda _: counter)
    # One basket per extend() call: a reader of a range of entries (a chunk, a Dask
    # partition) then decompresses only the baskets that overlap it.
    branches = {**event_ids, **jagged}
    for start in range(0, len(next(iter(event_ids.values()))), events_per_basket):
        stop = start + events_per_basket
        file[name].extend({key: array[start:stop] for key, array in branches.items()})


def write_sample(path: PathLike, tracks: TrackBatch, truth: MCTruth | None = None,
                 *, event_ids: Mapping[str, Any] | None = None, precision: Any = np.float32,
                 compression: str = "zstd", events_per_basket: int = 2000) -> None:
    """Write tracks (and truth) in the layout of this module, making the folders of ``path``
    that do not exist.

    Parameters
    ----------
    path : str or Path
        The ROOT file to write, replaced once the new one is complete (it is written as
        ``<path>.<unique>.part`` and renamed, so that a refused input or an interruption
        leaves an existing file as it was).
    tracks : TrackBatch
        The tracks of every event: the tree ``tracks``.
    truth : MCTruth, optional
        The MC vertices and each track's MC vertex: the tree ``truth`` and the branch
        ``mc_pv``; it must describe the same events and tracks.
    event_ids : mapping of str to array of int, optional
        Identifier branches of both trees, one integer per event in each (for a simulated
        sample its :attr:`~pvfinder.simulation.SimulatedSample.event_ids`); without them
        ``event_number`` counts the events from 0.
    precision : {numpy.float32, numpy.float64}
        How floats are stored (float32 by default, as LHCb stores track states).
    compression : {"zstd", "lz4", "zlib", "lzma", "none"}
        Track states barely compress (float32 noise): at ν = 7.6 ``zstd`` (the default)
        gives files 1 % smaller than ``zlib``'s, which take 1.6 to 2.8 times its CPU time to
        read (10 000 to 200 000 events); ``lz4``
        files are 15–18 % larger and read faster still; ``lzma`` (used for the bundled
        sample) is 3–4 % smaller and reads 5 to 15 times slower (10 000 events).
    events_per_basket : int
        Entries per basket (the unit ROOT compresses and reads). 2000 events at ν = 7.6 make
        baskets of about 1.7 MB per track branch, so that a reader of part of the file
        decompresses little more than that part.

    Raises
    ------
    ValueError
        For an unknown compression or precision, a basket size below 1, identifiers that
        are not one integer per event (or take the name of a branch of the layout), truth
        that does not match the tracks, track offsets that decrease or states that are not
        finite (wrapped buffers: :meth:`TrackBatch.from_buffers` does not scan them), a
        value beyond the range of ``precision``, or a URL for ``path`` (files are written on
        this machine).
    TypeError
        When ``tracks`` is not a TrackBatch or ``truth`` not an MCTruth.
    IsADirectoryError
        When ``path`` is a directory.
    FileExistsError
        When ``path`` is a device, a named pipe or a socket, which would be replaced.
    NotADirectoryError
        When a file stands where a folder of ``path`` should be (naming it).
    FileNotFoundError
        When ``path`` is a link into a folder that does not exist.
    """
    if not isinstance(tracks, TrackBatch):
        raise TypeError(f"tracks must be a TrackBatch (TrackBatch.from_awkward converts an "
                        f"awkward array), got {type(tracks).__name__}")
    if truth is not None and not isinstance(truth, MCTruth):
        raise TypeError(f"truth must be an MCTruth, got {type(truth).__name__}")
    if not _is_count(events_per_basket) or events_per_basket < 1:  # True was taken as 1
        raise ValueError(f"events_per_basket must be a positive integer, got "
                         f"{events_per_basket!r}")
    if np.dtype(precision) not in (np.float32, np.float64):  # ROOT has no float16
        raise ValueError(f"precision must be float32 or float64, got {np.dtype(precision)}")
    codec = _compression(compression)
    event_ids = _event_id_arrays(event_ids, 0, tracks.n_events, path, _SAMPLE_BRANCHES)
    if not event_ids:
        raise ValueError(f"{path}: event_ids must name at least one identifier branch")
    tracks = tracks.to_host()
    with _naming(path):  # from_buffers scans no offsets; check_matches scans them with labels
        if truth is None:
            _check_offsets(tracks.offsets, tracks.n_tracks, "tracks")
        else:
            truth.check_matches(tracks)
        _check_storable(tracks, TRACK_FIELDS, precision)  # before the file is made
        if truth is not None:
            _check_storable(truth.vertices, ("x", "y", "z"), precision)
    with _written_whole(_local_output(path)) as partial, _recreate(partial, codec) as file:
        jagged = _jagged(tracks, TRACK_FIELDS, precision)
        if truth is not None:
            jagged["mc_pv"] = jagged_array(tracks.offsets,
                                           np.asarray(truth.track_mc_pv, dtype=np.int32))
        _write_tree(file, TRACKS_TREE, "n_tracks", jagged, event_ids, events_per_basket)
        if truth is not None:
            pv = truth.vertices
            jagged = _jagged(pv, ("x", "y", "z"), precision)
            jagged["n_reconstructible"] = jagged_array(
                pv.offsets, np.asarray(pv.n_reconstructible, dtype=np.int32))
            _write_tree(file, TRUTH_TREE, "n_pvs", jagged, event_ids, events_per_basket)


def track_association(vertices: VertexBatch, track_counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each input track, the vertex that gives it the largest weight and that weight.

    Parameters
    ----------
    vertices : VertexBatch
        Vertices with weights (host arrays).
    track_counts : array of int, shape (n_events,)
        Number of input tracks of each event.

    Returns
    -------
    vertex_index : numpy.ndarray of int32, shape (n_tracks,)
        Index of the vertex within its event, −1 when no vertex gives the track a weight
        above 0 (ties go to the first vertex in z).
    weight : numpy.ndarray of float64, shape (n_tracks,)
        The track's weight in that vertex (0 for −1).

    Raises
    ------
    ValueError
        When ``vertices`` has no weights (found with ``weights=False``) or its weights do
        not match ``track_counts``.
    TypeError
        When ``vertices`` is not a VertexBatch.
    """
    _check_vertex_batch(vertices, "track_association")
    if vertices.weights is None:
        raise ValueError("vertices: the batch has no per-track weights (it was found with "
                         "weights=False), so there is no track association to give")
    vertices = dataclasses.replace(  # int64 (uint64 offsets would make the arithmetic float)
        vertices, offsets=np.asarray(vertices.offsets).astype(np.int64, copy=False),
        weight_offsets=np.asarray(vertices.weight_offsets).astype(np.int64, copy=False))
    track_offsets, vertex_event, weight_counts = _weight_rows(vertices, track_counts)
    # Each weight belongs to one vertex and, through its position in the vertex's row, to
    # one track of the event: scatter the rows onto the tracks.
    row_start = track_offsets[vertex_event] - vertices.weight_offsets[:-1]
    weights = vertices.weights
    track = np.arange(len(weights)) + np.repeat(row_start, weight_counts)
    best = np.zeros(int(track_offsets[-1]))
    np.maximum.at(best, track, weights)
    chosen = np.flatnonzero((weights > 0) & (weights == best[track]))
    local = (np.arange(vertices.n_vertices) - vertices.offsets[vertex_event]).astype(np.int32)
    chosen_vertex = np.searchsorted(vertices.weight_offsets, chosen, side="right") - 1
    unset = np.iinfo(np.int32).max
    index = np.full(len(best), unset, dtype=np.int32)
    np.minimum.at(index, track[chosen], local[chosen_vertex])
    index[index == unset] = -1
    return index, best


def _weight_rows(vertices: VertexBatch, track_counts: Any
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track offsets, each vertex's event and each vertex's number of weights, checked to give
    every vertex one weight per track of its event."""
    track_offsets = offsets_from_counts(track_counts, "track counts")
    vertex_event = np.repeat(np.arange(vertices.n_events), vertices.counts)
    weight_counts = np.diff(vertices.weight_offsets)
    if len(track_offsets) != len(vertices.offsets) or not np.array_equal(
            weight_counts, np.diff(track_offsets)[vertex_event]):
        raise ValueError("vertices: the weights do not match the given track counts")
    return track_offsets, vertex_event, weight_counts


def _write_target(path: Path) -> tuple[Path, Path]:
    """The file to write for ``path`` (the target of a link, as ``open`` writes through it;
    the rename would replace the link) and ``<file>.<unique>.part``, its name until complete
    (two jobs writing one output each rename a whole file of their own: a shared name had one
    job's vertices in the file and the other's success reported); once ``path`` is known to be
    a regular file or nothing yet (a directory was found out only at the final rename, the
    partial file left behind; /dev/null was replaced) and its folders are made."""
    kind = _not_a_regular_file(path)
    if kind == "a directory":
        raise IsADirectoryError(f"{path}: a directory, not a file to write")
    if kind is not None:  # the rename would replace /dev/null itself
        raise FileExistsError(f"{path}: {kind}, not a file to write")
    _make_folder_of(path)  # the folders the user named, not those of a link's target
    final = path.resolve() if path.is_symlink() else path
    if not final.parent.is_dir():
        raise FileNotFoundError(f"{path}: a link to {final}, whose folder does not exist")
    return final, final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


@contextlib.contextmanager
def _written_whole(path: Path) -> Iterator[Path]:
    """The partial file to write ``path`` as (see :func:`_write_target`): renamed to ``path``
    when the block ends, removed when it raises, so the file is whole or not there at all."""
    final, partial = _write_target(path)
    try:
        yield partial
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _recreate(path: Path, codec: Any) -> Any:
    """A new ROOT file at the local ``path``, given to uproot as an open file: given a name,
    uproot takes it for an fsspec URL, whose ``::`` chains protocols (``run::1.root`` was
    written as a file ``run:``). Closing the uproot file closes it."""
    handle = open(path, "w+b")  # noqa: SIM115 (uproot's file owns it from here)
    try:
        return uproot.recreate(handle, compression=codec)
    except BaseException:
        handle.close()
        raise


def _not_a_regular_file(path: Path) -> str | None:
    """What ``path`` (or the file it links to) is when it exists but is not a regular file,
    as ``"a directory"`` or ``"a character device"``; None otherwise."""
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there, or a link to nothing
        return None
    kinds = {stat.S_ISREG: None, stat.S_ISDIR: "a directory", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a named pipe",
             stat.S_ISSOCK: "a socket"}
    return next((kind for is_kind, kind in kinds.items() if is_kind(mode)), "a special file")


def _make_folder_of(path: Path) -> None:
    """Create the folders ``path`` is to be written in, naming a file in the way (the
    operating system's "File exists" or "Not a directory" does not say which)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocking = next((folder for folder in reversed(path.parents)
                         if folder.exists() and not folder.is_dir()), None)
        if blocking is None:  # gone meanwhile, or a link to nowhere: say what the OS says
            raise NotADirectoryError(f"{path}: cannot be written ({error.strerror}: "
                                     f"{error.filename})") from None
        raise NotADirectoryError(f"{path}: cannot be written, {blocking} is a file, not a "
                                 "directory") from None


class VertexWriter:
    """Append vertices to a new ROOT file chunk by chunk (layout in this module's docstring).

    The file is written under ``<path>.<unique>.part`` (:attr:`partial`; each writer its own)
    and renamed to ``path`` by :meth:`close`, so an interrupted run never leaves a
    half-written file that looks finished, and of two jobs writing one output each finishes
    whole. Used as a context manager it closes on success and discards the partial file on
    an exception; a writer dropped unfinished discards it too (a process killed outright
    leaves it behind).

    Parameters
    ----------
    path : path
        The finished file; the folders it is in are made if need be.
    with_weights : bool
        Also write the tree ``vertex_weights``.
    compression : {"zstd", "lz4", "zlib", "lzma", "none"}
        Codec of the baskets: ``lz4`` (the default) writes fastest, ``zstd`` files are 7 %
        smaller, 19 % with weights (see ``DEFAULT_VERTEX_COMPRESSION``); ROOT ≥ 6.20 reads
        all of them.

    Raises
    ------
    ValueError
        For an unknown compression or a URL for ``path`` (files are written on this
        machine); from :meth:`write` and :meth:`close`, once closed.
    IsADirectoryError
        When ``path`` is a directory.
    FileExistsError
        When ``path`` is a device, a named pipe or a socket, which would be replaced.
    NotADirectoryError
        When a file stands where a folder of ``path`` should be (naming it).
    FileNotFoundError
        When ``path`` is a link into a folder that does not exist.

    Examples
    --------
    >>> with VertexWriter("pvs.root") as writer:                # doctest: +SKIP
    ...     for chunk in iterate_tracks("tracks.root"):
    ...         writer.write(finder(chunk.tracks), chunk.event_ids, chunk.tracks.counts)
    """

    def __init__(self, path: PathLike, *, with_weights: bool = False,
                 compression: str = DEFAULT_VERTEX_COMPRESSION) -> None:
        _check_flag("with_weights", with_weights)  # "no" was taken as True
        self.path = _local_output(path)
        self._final, self.partial = _write_target(self.path)
        self.with_weights = with_weights
        self.n_events = self.n_vertices = 0
        self._ids: dict[str, np.dtype] | None = None
        self._per_track: bool | None = None
        self._empty_layout: tuple[dict[str, np.dtype], bool] | None = None
        self._inputs: list[str] | None = None
        codec = _compression(compression)
        try:
            self._file = _recreate(self.partial, codec)
            self._open = True
        except BaseException:  # a Ctrl-C may come once the file exists
            with contextlib.suppress(OSError):
                self.partial.unlink(missing_ok=True)
            raise

    def record_inputs(self, paths: Iterable[PathLike]) -> None:
        """Note in the file, when it is closed, the input files whose vertices it holds
        (read back by :func:`recorded_inputs`; ``pvfinder reconstruct --skip-existing``
        resumes by it); one path alone is taken as such, not as the letters of its name."""
        self._check_open()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self._inputs = [input_identity(path) for path in paths]

    def write(self, vertices: VertexBatch, event_ids: Mapping[str, Any] | None = None,
              track_counts: Any = None) -> None:
        """Append the vertices of consecutive events.

        Parameters
        ----------
        vertices : VertexBatch
            The events' vertices (with weights when the writer writes them).
        event_ids : mapping of str to array, optional
            One integer per event for each identifier branch (the same names in every call
            with events: the first such call gives the branches and their types); without it
            ``event_number`` counts the events written.
        track_counts : array of int, optional
            Input tracks per event; needed for the per-track ``vertex_index`` and ``weight``.

        Raises
        ------
        ValueError
            For identifiers that are not one integer per event (or change names or types
            between calls, or take a branch name of the layout), a batch without weights
            given to a writer that writes them, track counts that do not match them,
            offsets that do not cut the fields (or the weights) into lists end to end, a
            field value that is not finite (the reader refuses it), or weights (when
            written) outside [0, 1] or not as many for every vertex of an event.
        """
        self.write_all([(vertices, event_ids, track_counts)])

    def write_all(self, batches: Iterable[tuple[VertexBatch, Mapping[str, Any] | None, Any]]
                  ) -> None:
        """Append batches of consecutive events, all or none: each ``(vertices, event_ids,
        track_counts)`` (as :meth:`write` takes them) is checked before any is written, so
        that a refused one (``ValueError``) leaves the file as it was. Each batch is a basket.
        An ``OSError`` while writing (a full disk) may leave part of them: discard the file."""
        self._check_open()
        layout = None if self._ids is None else (self._ids, self._per_track)
        checked = []
        first_event = self.n_events
        for vertices, event_ids, track_counts in batches:
            _check_vertex_batch(vertices, self.path)
            vertices = vertices.to_host()
            _check_vertex_structure(vertices, self.path, self.with_weights)
            ids = _event_id_arrays(event_ids, first_event, vertices.n_events, self.path,
                                   _VERTEX_BRANCHES)
            # The first events give the layout, not a batch of none (an empty input merged
            # among others), whose identifiers are not written and need not fit it.
            if vertices.n_events:
                layout = layout or _layout_of(ids, track_counts)
                self._check(vertices, ids, track_counts, *layout)
            checked.append((vertices, ids, track_counts))
            first_event += vertices.n_events
        if self._ids is None and layout is not None:  # only once nothing was refused
            self._create(*layout)
        if self._empty_layout is None and checked:  # a file of no events gets the first's
            self._empty_layout = _layout_of(*checked[0][1:])
        for vertices, ids, track_counts in checked:  # converted one at a time
            if vertices.n_events:
                ids = {name: values.astype(self._ids[name], copy=False)
                       for name, values in ids.items()}
                self._file[VERTICES_TREE].extend(
                    {**ids, **_jagged(vertices, VERTEX_FIELDS, np.float64)})
                if self.with_weights:
                    self._file[WEIGHTS_TREE].extend(
                        {**ids, **_weight_branches(vertices, track_counts)})
            self.n_events += vertices.n_events
            self.n_vertices += vertices.n_vertices

    def _check(self, vertices: VertexBatch, ids: dict[str, np.ndarray], track_counts: Any,
               id_types: dict[str, np.dtype], per_track: bool) -> None:
        """Refuse a batch that does not fit the file's layout (identifiers of other names,
        values their branch types cannot hold, weights or track counts missing or not
        matching)."""
        if list(ids) != list(id_types):
            raise ValueError(f"{self.path}: these events bring the identifiers "
                             f"({', '.join(ids)}) but the file holds ({', '.join(id_types)}) "
                             "from the first written: merged inputs need the same ones (one "
                             "without identifier branches brings event_number, its entry)")
        for name, values in ids.items():
            _check_fits(values, id_types[name], name, self.path)
        if not self.with_weights:
            return
        if (track_counts is not None) != per_track:
            raise ValueError(f"{self.path}: track counts must be given with every write or "
                             "with none (they make the per-track branches)")
        if not vertices.n_events:  # nothing of it is written
            return
        if vertices.weights is None:
            raise ValueError("vertices: the writer writes weights but the batch has none")
        if track_counts is not None:
            _weight_rows(vertices, track_counts)

    def _create(self, id_types: dict[str, np.dtype], per_track: bool) -> None:
        self._ids = dict(id_types)
        self._per_track = per_track
        jagged = {name: _var("float64") for name in VERTEX_FIELDS}
        self._file.mktree(VERTICES_TREE, {**self._ids, **jagged},
                          counter_name=lambda _: "n_vertices")
        if self.with_weights:
            branches = {"weight_counts": _var("int32"), "weights": _var("float64")}
            if per_track:
                branches.update(vertex_index=_var("int32"), weight=_var("float64"))
            self._file.mktree(WEIGHTS_TREE, {**self._ids, **branches},
                              counter_name=_WEIGHT_COUNTERS.__getitem__)

    def close(self) -> Path:
        """Finish the file and give it its name; returns that name."""
        self._check_open()
        self._open = False
        if self._ids is None:  # no events: still a valid vertex file, with the branches that
            self._create(*(self._empty_layout or (  # the input's events would have had
                {name: np.dtype(dtype) for name, dtype in _ENTRY_NUMBER.items()}, False)))
        if self._inputs is not None:  # JSON: any path (a newline in it) comes back whole
            self._file[INPUTS_RECORD] = json.dumps(self._inputs)
        self._file.close()
        os.replace(self.partial, self._final)
        return self.path

    def discard(self) -> None:
        """Drop the partial file (also when it cannot be finished: a full disk)."""
        self._open = False
        try:
            self._file.close()
        except OSError:
            pass  # the file goes anyway
        finally:
            self.partial.unlink(missing_ok=True)

    def __del__(self) -> None:
        # Dropped unfinished: a stop came between its making and the code that would have
        # discarded it (or its user forgot it).
        if getattr(self, "_open", False):
            with contextlib.suppress(OSError):
                self.discard()

    def __enter__(self) -> VertexWriter:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if not self._open:  # closed or discarded inside the block already
            return
        if kind is not None:
            self.discard()
            return
        try:
            self.close()
        except BaseException:  # cannot be finished (a full disk): no partial file left either
            self.discard()
            raise

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError(f"{self.path}: the writer is closed")


def _check_vertex_batch(vertices: Any, where: PathLike) -> None:
    if not isinstance(vertices, VertexBatch):
        raise TypeError(f"{where}: vertices must be a VertexBatch (VertexBatch.from_awkward "
                        f"converts an awkward array), got {type(vertices).__name__}")


def _check_vertex_structure(vertices: VertexBatch, path: PathLike, weights: bool) -> None:
    """Offsets that cut every field (and, when they are written, the weights: in [0, 1], as
    many for every vertex of an event) into lists, and finite values: a batch made with the
    constructor has not been checked, and the reader refuses a file that breaks these."""
    with _naming(path):
        vertices.check_structure(weights=weights)
        _check_storable(vertices, VERTEX_FIELDS, np.float64)  # the reader wants them finite
        if weights and vertices.weights is not None:
            _check_weights(np.asarray(vertices.offsets), np.asarray(vertices.weight_offsets),
                           np.asarray(vertices.weights))


def _layout_of(ids: Mapping[str, np.ndarray], track_counts: Any
               ) -> tuple[dict[str, np.dtype], bool]:
    """The layout a batch gives a vertex file: its identifiers' types, and whether it has
    per-track branches (when written with track counts)."""
    return {name: values.dtype for name, values in ids.items()}, track_counts is not None


def _entry_number_ids(first: int, n_events: int) -> dict[str, np.ndarray]:
    """The identifiers of ``n_events`` events from entry ``first`` of an input without any."""
    return {name: np.arange(first, first + n_events, dtype=dtype)
            for name, dtype in _ENTRY_NUMBER.items()}


def _event_id_arrays(event_ids: Mapping[str, Any] | None, first: int, n_events: int,
                     path: PathLike, taken: frozenset[str]) -> dict[str, np.ndarray]:
    """Identifier arrays of ``n_events`` events, checked to hold one integer per event (a
    cast to a branch's type must then drop nothing) and not to be named as one of the
    ``taken`` branches of the file; without any, ``event_number`` counting from ``first``."""
    if event_ids is None:
        return _entry_number_ids(first, n_events)
    if not isinstance(event_ids, Mapping):
        raise TypeError(f"{path}: event_ids must map branch names to arrays "
                        f"({{'event_number': ...}}), got {type(event_ids).__name__}")
    clashing = sorted(set(event_ids) & taken)
    if clashing:
        raise ValueError(f"{path}: event identifier(s) {', '.join(clashing)} would take the "
                         "name of another branch of the file")
    ids = {name: np.asarray(values) for name, values in event_ids.items()}
    for name, values in ids.items():
        if values.shape != (n_events,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: event identifier {name!r} must be one integer per "
                             f"event ({n_events}), got {values.dtype} of shape {values.shape}")
    return ids


def _check_fits(values: np.ndarray, dtype: np.dtype, name: str, path: Path) -> None:
    """Refuse integer ``values`` that the branch's integer ``dtype`` cannot hold (a cast would
    wrap them: -50 into 18446744073709551566 as uint64)."""
    if values.size:
        limits = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < limits.min or high > limits.max:
            raise ValueError(f"{path}: event identifier {name!r} runs from {low} to {high}, "
                             f"beyond the {dtype} of its branch (the first events written)")


def _var(dtype: str) -> ak.types.ListType:
    """A jagged branch type; built, not parsed from ``"var * float64"``, which costs uproot
    about 10 ms per branch."""
    return ak.types.ListType(ak.types.NumpyType(dtype))


def _weight_branches(vertices: VertexBatch, track_counts: Any) -> dict[str, ak.Array]:
    """The tree of weights' branches of a batch (checked by ``VertexWriter._check``)."""
    branches = {
        "weight_counts": jagged_array(vertices.offsets,
                                np.diff(vertices.weight_offsets).astype(np.int32)),
        "weights": jagged_array(vertices.weight_offsets[vertices.offsets],
                          np.asarray(vertices.weights, dtype=np.float64)),  # native order
    }
    if track_counts is not None:
        index, weight = track_association(vertices, track_counts)
        track_offsets = offsets_from_counts(track_counts, "track counts")
        branches["vertex_index"] = jagged_array(track_offsets, index)
        branches["weight"] = jagged_array(track_offsets, weight)
    return branches


def write_vertices(path: PathLike, vertices: VertexBatch, *, with_weights: bool = True,
                   event_ids: Mapping[str, Any] | None = None, track_counts: Any = None,
                   compression: str = DEFAULT_VERTEX_COMPRESSION) -> None:
    """Write reconstructed vertices (float64) to a new file in one go.

    Parameters
    ----------
    path : path
        The file (written as ``<path>.<unique>.part``, then renamed; see
        :class:`VertexWriter`).
    vertices : VertexBatch
        The vertices of every event.
    with_weights : bool
        Also write the tree ``vertex_weights`` when the batch has weights.
    event_ids, track_counts
        As for :meth:`VertexWriter.write`.
    compression : {"zstd", "lz4", "zlib", "lzma", "none"}
        As for :class:`VertexWriter`.

    Raises
    ------
    ValueError
        As :class:`VertexWriter` and its :meth:`~VertexWriter.write`; nothing is left
        behind then.
    TypeError
        When ``vertices`` is not a VertexBatch or ``with_weights`` not a bool.
    """
    _check_vertex_batch(vertices, path)
    _check_flag("with_weights", with_weights)
    with VertexWriter(path, with_weights=with_weights and vertices.weights is not None,
                      compression=compression) as writer:
        writer.write(vertices, event_ids, track_counts)


def check_vertex_file(path: PathLike) -> None:
    """Check that ``path`` is a ROOT file with the tree ``vertices`` (one this module wrote).

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or unreadable file, or one without the tree ``vertices``, naming it.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    path = _input_name(path)
    with _open(path) as file:
        _tree(file, path, VERTICES_TREE)


def recorded_inputs(path: PathLike) -> list[str] | None:
    """The inputs a vertex file holds the vertices of, as :meth:`VertexWriter.record_inputs`
    noted them (absolute paths, or URLs: see :func:`input_identity`), or None when it noted
    none.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or unreadable file, or one without the tree ``vertices``.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    path = _input_name(path)
    with _open(path) as file:
        _tree(file, path, VERTICES_TREE)  # a file of tracks notes no inputs either
        if not _holds(file, path, INPUTS_RECORD):
            return None
        with _reading(f"{path}:{INPUTS_RECORD}"):
            text = str(file[INPUTS_RECORD])
        try:
            recorded = json.loads(text)
        except json.JSONDecodeError:
            recorded = None
    if not (isinstance(recorded, list) and all(isinstance(item, str) for item in recorded)):
        raise ValueError(f"{path}: its {INPUTS_RECORD!r} is not a list of paths")
    return recorded


def holds_weights(path: PathLike) -> bool:
    """Whether a vertex file has the tree ``vertex_weights`` (it was written with weights).

    Parameters
    ----------
    path : path
        A vertex file.

    Returns
    -------
    bool
        True when it holds the track–vertex weights.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or unreadable file.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    path = _input_name(path)
    with _open(path) as file:
        return _holds(file, path, WEIGHTS_TREE)


def read_event_ids(path: PathLike, tree: str) -> dict[str, np.ndarray]:
    """The event identifiers (``run_number``, ``event_number``) that ``tree`` in ``path``
    holds, by name; empty when it has none.

    Parameters
    ----------
    path : str or Path
        A ROOT file (local, or a URL as for :func:`inspect_tracks`).
    tree : str
        The tree whose identifier branches to read.

    Returns
    -------
    dict of str to numpy.ndarray
        One array of one integer per entry for each identifier branch found.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or unreadable file or a missing tree, naming it.
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    """
    path = _input_name(path)
    with _open(path) as file:
        found = _tree(file, path, tree)
        with _reading(f"{path}:{tree}"):
            return {name: found[name].array(library="np") for name in EVENT_ID_BRANCHES
                    if name in found}


def read_vertices(path: PathLike, *, weights: bool = True) -> VertexBatch:
    """Read vertices written by :class:`VertexWriter`.

    Parameters
    ----------
    path : path
        A vertex file (the tree ``vertices``, and ``vertex_weights`` when it was written).
    weights : bool
        Read the weights too, when the file has them.

    Returns
    -------
    VertexBatch
        One entry per event of the file, with weights when read.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or unreadable file, a missing tree or branch, or values that do not
        make vertices (naming the file and tree).
    OSError
        For a URL whose storage or network fails as it is opened (see
        :func:`inspect_tracks`).
    TypeError
        When ``weights`` is not a bool.
    """
    _check_flag("weights", weights)
    path = _input_name(path)
    with _open(path) as file:
        where = f"{path}:{VERTICES_TREE}"
        offsets, flat = _read_jagged(_tree(file, path, VERTICES_TREE), where, VERTEX_FIELDS)
        weight_counts = weight_values = None
        if weights and _holds(file, path, WEIGHTS_TREE):
            tree, where_weights = _tree(file, path, WEIGHTS_TREE), f"{path}:{WEIGHTS_TREE}"
            # per-vertex counts and per-event weights: two different jaggednesses
            weight_counts = _read_jagged(tree, where_weights, ("weight_counts",))[1]["weight_counts"]
            weight_values = _read_jagged(tree, where_weights, ("weights",))[1]["weights"]
    with _naming(where):
        vertices = VertexBatch.from_arrays(offsets=offsets, **flat)
    if weight_values is None:
        return vertices
    with _naming(where_weights):  # the vertices were fine: the weights' tree is at fault
        return VertexBatch.from_arrays(offsets=offsets, weights=weight_values,
                                       weight_counts=weight_counts, **flat)
