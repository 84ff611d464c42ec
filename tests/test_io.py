"""ROOT I/O: round trips, schemas, chunked reading and writing, and errors that name file,
tree, branch and entry."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import warnings

import awkward as ak
import fsspec
import fsspec.implementations.memory
import numpy as np
import pytest
import uproot
from fsspec.registry import known_implementations
from uproot.interpretation.jagged import AsJagged
from uproot.interpretation.numerical import AsDouble32, AsDtype, AsFloat16

from pvfinder import PVFinder, find_vertices, simulate
from pvfinder.events import TRACK_FIELDS, VERTEX_FIELDS, TrackBatch, VertexBatch
from pvfinder.io import (
    TrackSchema,
    VertexWriter,
    holds_weights,
    inspect_tracks,
    is_url,
    iterate_tracks,
    parse_step_size,
    read_tracks,
    read_truth,
    read_vertices,
    recorded_inputs,
    track_association,
    write_sample,
    write_vertices,
)


def write_tree(path, flat_values, counts, flat=None, tree="tracks"):
    """A tree of jagged branches sharing one counter (``counts``), plus one-per-entry ``flat``."""
    jagged = {name: ak.unflatten(values, counts) for name, values in flat_values.items()}
    flat = flat or {}
    with uproot.recreate(path) as file:
        file.mktree(tree, {**{k: v.dtype for k, v in flat.items()},
                           **{k: v.type for k, v in jagged.items()}},
                    counter_name=lambda _: "n_tracks")
        file[tree].extend({**flat, **jagged})
    return path


def assert_same_vertices(found: VertexBatch, expected: VertexBatch, weights: bool = True,
                         backend: str = "cpu"):
    """Equal, wherever the two batches live, with their weights if asked: to the last bit when
    both were found on the CPU (``backend``); on CUDA, whose histogram adds into a bin in the
    order its atomics come (kernels/README.md), the counts exactly and the floats to 1e-9."""
    found, expected = found.to_host(), expected.to_host()
    if backend == "cpu":
        same = np.testing.assert_array_equal
    else:
        same = functools.partial(np.testing.assert_allclose, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(found.offsets, expected.offsets)
    for name in VERTEX_FIELDS:
        same(getattr(found, name), getattr(expected, name), err_msg=name)
    if weights:
        same(found.weights, expected.weights)
        np.testing.assert_array_equal(found.weight_offsets, expected.weight_offsets)


@pytest.fixture(scope="module")
def small():
    from pvfinder.simulation import simulate

    return simulate(200, seed=3)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, small):
    path = tmp_path_factory.mktemp("io") / "small.root"
    write_sample(path, small.tracks, small.truth, precision=np.float64)
    return path


def test_sample_round_trip(tmp_path, sample):
    tracks, truth = sample.tracks.select_events(0, 20), sample.truth.select_events(0, 20, sample.tracks)
    path = tmp_path / "sample.root"
    write_sample(path, tracks, truth, precision=np.float64, events_per_basket=8)
    # 20 events in baskets of 8: a reader of some entries decompresses only their baskets.
    for tree in ("tracks", "truth"):
        for branch in uproot.open(path)[tree].values():
            np.testing.assert_array_equal(branch.entry_offsets, [0, 8, 16, 20])
    again = read_tracks(path)
    np.testing.assert_array_equal(again.offsets, tracks.offsets)
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(tracks, name))
    truth_again = read_truth(path)
    np.testing.assert_array_equal(truth_again.track_mc_pv, truth.track_mc_pv)
    np.testing.assert_array_equal(truth_again.vertices.offsets, truth.vertices.offsets)
    for name in ("x", "y", "z", "n_reconstructible"):
        np.testing.assert_array_equal(getattr(truth_again.vertices, name),
                                      getattr(truth.vertices, name), err_msg=name)


def test_vertices_round_trip(tmp_path, sample):
    vertices = find_vertices(sample.tracks.select_events(0, 20), backend="cpu")
    path = tmp_path / "pvs.root"
    write_vertices(path, vertices)
    assert_same_vertices(read_vertices(path), vertices)
    assert read_vertices(path, weights=False).weights is None


def test_file_without_truth(tmp_path, sample):
    path = tmp_path / "tracks.root"
    write_sample(path, sample.tracks.select_events(0, 3))
    assert read_truth(path) is None


def test_round_trip_in_chunks_matches_in_memory_run(tmp_path, small, small_file):
    """simulate → write → read in chunks → reconstruct → write → read == the in-memory run."""
    expected = find_vertices(small.tracks, backend="cpu")
    finder = PVFinder(backend="cpu")
    output = tmp_path / "pvs.root"
    starts = []
    with VertexWriter(output, with_weights=True) as writer:
        for chunk in iterate_tracks(small_file, step_size=37):
            starts.append((chunk.entry_start, chunk.entry_stop))
            writer.write(finder(chunk.tracks), chunk.event_ids, chunk.tracks.counts)
    assert starts == [(s, min(s + 37, 200)) for s in range(0, 200, 37)]
    assert_same_vertices(read_vertices(output), expected)
    branches = uproot.open(output)["vertices"].arrays(["event_number", "n_vertices"], library="np")
    np.testing.assert_array_equal(branches["event_number"], np.arange(200))
    np.testing.assert_array_equal(branches["n_vertices"], expected.counts)


def test_step_size_in_bytes_bounds_the_chunks(small_file):
    chunks = list(iterate_tracks([small_file, small_file], step_size="300 kB"))
    per_file = [c for c in chunks if c.entry_start == 0]
    assert len(per_file) == 2 and len(chunks) > 4
    assert max(c.n_events for c in chunks) < 200
    assert sum(c.n_events for c in chunks) == 400
    assert sum(c.tracks.n_tracks for c in chunks) == 2 * read_tracks(small_file).n_tracks


def test_chunks_of_an_uncompressed_file_outlive_its_mapping(tmp_path, small, small_file):
    """Files are memory-mapped: what a chunk holds must be copied out of the mapping, or it
    would change or vanish when the file is closed or rewritten."""
    path = tmp_path / "raw.root"
    write_sample(path, small.tracks, precision=np.float64, compression="none")
    chunks = list(iterate_tracks(path, step_size=50))  # the file is closed again here
    path.unlink()
    expected = read_tracks(small_file)
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(np.concatenate([getattr(c.tracks, name) for c in chunks]),
                                      getattr(expected, name), err_msg=name)


def test_track_association_picks_the_heaviest_vertex():
    # event 0: 2 vertices × 3 tracks; event 1: no vertex, 2 tracks; event 2: 1 vertex × 1 track
    vertices = VertexBatch.from_arrays(
        counts=[2, 0, 1],
        weights=[0.9, 0.0, 0.3, 0.1, 0.0, 0.3, 0.7], weight_counts=[3, 3, 1],
        **{name: np.zeros(3) for name in VERTEX_FIELDS})
    index, weight = track_association(vertices, [3, 2, 1])
    np.testing.assert_array_equal(index, [0, -1, 0, -1, -1, 0])  # a tie goes to the first
    np.testing.assert_array_equal(weight, [0.9, 0.0, 0.3, 0.0, 0.0, 0.7])
    with pytest.raises(ValueError, match="do not match the given track counts"):
        track_association(vertices, [3, 2, 2])
    unweighted = VertexBatch.from_arrays(counts=[2, 0, 1],
                                         **{name: np.zeros(3) for name in VERTEX_FIELDS})
    with pytest.raises(ValueError, match="no per-track weights"):
        track_association(unweighted, [3, 2, 1])


def test_weights_tree_holds_each_tracks_vertex(tmp_path, small):
    tracks = small.tracks.select_events(0, 10)
    vertices = find_vertices(tracks, backend="cpu")
    path = tmp_path / "pvs.root"
    write_vertices(path, vertices, track_counts=tracks.counts)
    tree = uproot.open(path)["vertex_weights"].arrays(["vertex_index", "weight"])
    assert ak.num(tree.vertex_index).tolist() == tracks.counts.tolist()
    index, weight = track_association(vertices, tracks.counts)
    np.testing.assert_array_equal(ak.flatten(tree.vertex_index), index)
    np.testing.assert_array_equal(ak.flatten(tree.weight), weight)
    assert (index >= 0).mean() > 0.5  # most tracks come from a PV


def test_buffers_of_other_types_are_written_as_the_finders_are(tmp_path, small):
    # Unsigned offsets (from_buffers): their counts were uint64, which np.repeat refused
    # ("Cannot cast ... from uint64 to int64") in the truth's and the weights' checks.
    tracks = TrackBatch.from_buffers(small.tracks.offsets.astype(np.uint64),
                                     **{name: getattr(small.tracks, name)
                                        for name in TRACK_FIELDS})
    assert tracks.counts.dtype == np.int64
    write_sample(tmp_path / "tracks.root", tracks, small.truth, precision=np.float64)
    again = read_tracks(tmp_path / "tracks.root")
    np.testing.assert_array_equal(again.offsets, small.tracks.offsets)
    np.testing.assert_array_equal(again.z, small.tracks.z)
    np.testing.assert_array_equal(read_truth(tmp_path / "tracks.root").track_mc_pv,
                                  small.truth.track_mc_pv)
    vertices = find_vertices(tracks, backend="cpu")
    # Unsigned vertex offsets (the weights' check refused them) and weight offsets (the track
    # association computed in floats), and big-endian weights (uproot raised).
    unsigned = dataclasses.replace(vertices, offsets=vertices.offsets.astype(np.uint64),
                                   weight_offsets=vertices.weight_offsets.astype(np.uint64))
    for counts in (None, tracks.counts):
        write_vertices(tmp_path / "unsigned.root", unsigned, track_counts=counts)
        assert_same_vertices(read_vertices(tmp_path / "unsigned.root"), vertices)
    swapped = dataclasses.replace(vertices, weights=vertices.weights.astype(">f8"))
    write_vertices(tmp_path / "pvs.root", swapped, track_counts=tracks.counts)
    assert_same_vertices(read_vertices(tmp_path / "pvs.root"), vertices)
    tree = uproot.open(tmp_path / "pvs.root")["vertex_weights"].arrays(["vertex_index"])
    assert ak.num(tree.vertex_index).tolist() == small.tracks.counts.tolist()


def test_schema_maps_branches_and_carries_event_ids(tmp_path, small):
    tracks = small.tracks.select_events(0, 30)
    counts = tracks.counts
    renamed = {f"velo_{name}": np.asarray(getattr(tracks, name)) for name in TRACK_FIELDS}
    ids = {"run_number": np.full(30, 271828, dtype=np.int32),
           "event_number": np.arange(1000, 1030, dtype=np.uint64)}
    path = write_tree(tmp_path / "velo.root", renamed, counts, flat=ids, tree="Velo")
    schema = TrackSchema(tree="Velo", branches={name: f"velo_{name}" for name in TRACK_FIELDS})
    source = inspect_tracks(path, schema)
    assert source.event_ids == {"run_number": "int32", "event_number": "uint64"}
    output = tmp_path / "pvs.root"
    with VertexWriter(output) as writer:
        for chunk in iterate_tracks(path, schema, step_size=11):
            writer.write(find_vertices(chunk.tracks, backend="cpu"), chunk.event_ids)
    assert_same_vertices(read_vertices(output), find_vertices(tracks, backend="cpu"),
                         weights=False)
    written = uproot.open(output)["vertices"].arrays(["run_number", "event_number"],
                                                     library="np")
    np.testing.assert_array_equal(written["run_number"], ids["run_number"])
    np.testing.assert_array_equal(written["event_number"], ids["event_number"])
    assert written["event_number"].dtype == np.uint64


@pytest.mark.parametrize("suffix", [".toml", ".TOML", ".json"])  # .TOML was parsed as JSON
def test_schema_from_file(tmp_path, suffix):
    path = tmp_path / f"schema{suffix}"
    if suffix.lower() == ".toml":
        path.write_text('tree = "Velo"\nevent_ids = ["evt"]\n[branches]\nx = "velo_x"\n'
                        "[fill_missing_covariance]\ncov_xtx = 0.0\n")
    else:
        path.write_text(json.dumps({"tree": "Velo", "event_ids": ["evt"],
                                    "branches": {"x": "velo_x"},
                                    "fill_missing_covariance": {"cov_xtx": 0.0}}))
    schema = TrackSchema.from_file(path)
    assert schema.tree == "Velo" and schema.event_ids == ("evt",)
    assert schema.branches["x"] == "velo_x" and schema.branches["y"] == "y"
    assert schema.fill_missing_covariance == {"cov_xtx": 0.0}


def test_schema_reads_event_ids_given_as_a_generator_once():
    assert TrackSchema(event_ids=(name for name in ("run", "evt"))).event_ids == ("run", "evt")


def test_schema_takes_one_event_id_as_a_string(tmp_path):
    path = tmp_path / "schema.toml"
    path.write_text('event_ids = "event_number"\n')
    assert TrackSchema.from_file(path).event_ids == ("event_number",)  # not its letters


@pytest.mark.parametrize(("given", "taken"), [(64, 64), ("64", 64), (np.int64(64), 64),
                                             ("100 MB", "100 MB"), ("1.5GiB", "1.5GiB"),
                                             ("1e2 MB", "1e2 MB"), ("+100 MB", "+100 MB"),
                                             ("1 B", "1 B"), ("1e-6 MB", "1e-6 MB")])
def test_step_size_in_entries_or_with_a_unit(given, taken):
    assert parse_step_size(given) == taken


@pytest.mark.parametrize("step_size", ["1e4", "ten", "100 M", "0 MB", "-1 MB", 0, -5, True,
                                       2.5, "²", "1e-9 MB", "0.5 B", "1e400 MB"])
def test_step_size_mistakes(step_size):
    with pytest.raises(ValueError, match="step size must be a positive number of entries"):
        parse_step_size(step_size)
    # iterate_tracks refuses it at the call, not at the first chunk (the file is not read)
    with pytest.raises(ValueError, match="step size must be a positive number of entries"):
        iterate_tracks("no such file.root", step_size=step_size)


def test_iterate_tracks_takes_the_file_names_one_at_a_time(small_file):
    """Checking the step size at the call must not drain a lazy source of names."""
    taken = []

    def names():
        for _ in range(2):
            taken.append(small_file)
            yield small_file

    chunks = iterate_tracks(names(), step_size=10**6)
    assert taken == []
    next(chunks)
    assert taken == [small_file]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"branch": {}}, "unknown key.*branch"),
        ({"branches": {"q": "b"}}, "unknown field.*q"),
        ({"fill_missing_covariance": {"x": 0}}, "only covariance fields may be filled"),
        ({"fill_missing_covariance": {"cov_xx": -1}}, "must be finite and non-negative"),
        ({"fill_missing_covariance": {"cov_xtx": "a"}}, "must be a number"),
        ({"fill_missing_covariance": {"cov_xtx": True}}, "must be a number, got True"),  # 1.0
        ({"fill_missing_covariance": {"cov_xtx": "0"}}, "must be a number, got '0'"),  # 0.0
        ({"branches": {1: "x"}}, "unknown field\\(s\\) 1; fields are"),  # join's TypeError
        ({"event_ids": {"run": "b"}}, "event_ids must be branch names, got {'run': 'b'}"),
        ({"event_ids": ["run", 7]}, "event_ids must be branch names"),
        ({"event_ids": 5}, "event_ids must be branch names, got 5"),
        ({"event_ids": None}, "event_ids must be branch names, got None"),
        # Values of the wrong kind (a TOML or JSON file may hold anything): no AttributeError
        # or TypeError from deep inside.
        ({"tree": 5}, "tree must be a name, got 5"),
        ({"branches": ["x"]}, "branches must map fields to branch names"),
        ({"branches": {"x": 3}}, "branches must map fields to branch names"),
        ({"fill_missing_covariance": [1]}, "fill_missing_covariance must map"),
    ],
)
def test_schema_mistakes(mapping, message):
    with pytest.raises(ValueError, match=message):
        TrackSchema.from_mapping(mapping)


def test_a_schema_file_that_holds_no_table_says_so(tmp_path):
    # A JSON list said "sequence item 0: expected str instance, int found".
    for text in ("[1, 2]", '"tracks"'):
        (tmp_path / "schema.json").write_text(text)
        with pytest.raises(ValueError, match="schema.json: track schema: expected a table of "
                                             "keys"):
            TrackSchema.from_file(tmp_path / "schema.json")


def test_schema_file_that_cannot_be_read(tmp_path):
    with pytest.raises(ValueError, match="cannot be read as a schema file"):
        TrackSchema.from_file(tmp_path)  # a directory


def test_missing_covariance_filled_only_when_asked(tmp_path, small):
    tracks = small.tracks.select_events(0, 5)
    kept = {name: np.asarray(getattr(tracks, name)) for name in TRACK_FIELDS
            if name not in ("cov_xtx", "cov_yty")}
    path = write_tree(tmp_path / "nocorr.root", kept, tracks.counts)
    with pytest.raises(ValueError, match=r"nocorr.root:tracks: missing branch\(es\) "
                                         r"cov_xtx, cov_yty.*--fill-cov"):
        read_tracks(path)
    filled = read_tracks(path, schema=TrackSchema(fill_missing_covariance={"cov_xtx": 0,
                                                                           "cov_yty": 0.5}))
    np.testing.assert_array_equal(filled.cov_xtx, np.zeros(tracks.n_tracks))
    np.testing.assert_array_equal(filled.cov_yty, np.full(tracks.n_tracks, 0.5))
    np.testing.assert_array_equal(filled.x, tracks.x)


@pytest.mark.parametrize(("x_dtype", "fill", "dtype"), [
    (np.int32, 0.5, np.float64),  # was 0 (and 1e10 was -2147483648), without a word
    (np.float32, 1e-3, np.float32),  # the states' precision
    (np.float32, 1e39, np.float64),  # was inf: refused as a bad state in every chunk
])
def test_a_fill_value_is_kept_whatever_the_states_type(tmp_path, small, x_dtype, fill, dtype):
    tracks = small.tracks.select_events(0, 3)
    kept = {name: np.asarray(getattr(tracks, name), dtype=np.float32) for name in TRACK_FIELDS
            if name != "cov_xtx"}
    kept["x"] = np.asarray(tracks.x * 1000, dtype=x_dtype)  # e.g. positions in µm
    path = write_tree(tmp_path / "fill.root", kept, tracks.counts)
    filled = read_tracks(path, schema=TrackSchema(fill_missing_covariance={"cov_xtx": fill}))
    assert filled.cov_xtx.dtype == dtype
    np.testing.assert_array_equal(filled.cov_xtx, np.full(tracks.n_tracks, fill, dtype=dtype))


@pytest.mark.parametrize("counts", [[0], "one empty event among others"])
def test_event_without_tracks_gives_no_vertex(tmp_path, small, counts):
    if counts == [0]:
        tracks = small.tracks.select_events(0, 0)
        tracks = TrackBatch.from_arrays(counts=[0], **{n: getattr(tracks, n) for n in TRACK_FIELDS})
    else:  # events 0 and 2 of the sample with an empty event between them
        first, third = small.tracks.select_events(0, 1), small.tracks.select_events(2, 3)
        tracks = TrackBatch.from_arrays(
            counts=[first.n_tracks, 0, third.n_tracks],
            **{n: np.concatenate([getattr(first, n), getattr(third, n)]) for n in TRACK_FIELDS})
    path = tmp_path / "empty_event.root"
    write_sample(path, tracks, precision=np.float64)
    again = read_tracks(path)
    assert again.counts.tolist() == tracks.counts.tolist()
    vertices = find_vertices(again, backend="cpu")
    assert vertices.counts[-1 if counts == [0] else 1] == 0
    assert_same_vertices(vertices, find_vertices(tracks, backend="cpu"))


def test_writer_discards_partial_file_on_error(tmp_path, small):
    output = tmp_path / "pvs.root"
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    with pytest.raises(RuntimeError), VertexWriter(output) as writer:
        writer.write(vertices)
        assert writer.partial.exists() and not output.exists()
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with VertexWriter(output):  # nothing written: still a valid, empty file
        pass
    assert read_vertices(output).n_events == 0


def test_a_stop_as_a_writer_is_made_or_just_after_leaves_no_partial_file(tmp_path, small,
                                                                          monkeypatch):
    # pvfinder reconstruct left an empty OUT.part after a SIGTERM, about once in 30 runs.
    output = tmp_path / "pvs.root"
    recreate = uproot.recreate

    def stopped_once_made(*args, **kwargs):
        recreate(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(uproot, "recreate", stopped_once_made)
    with pytest.raises(KeyboardInterrupt):
        VertexWriter(output)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    writer = VertexWriter(output)  # made, but its maker stopped before it could discard it
    writer.write(find_vertices(small.tracks.select_events(0, 5), backend="cpu"))
    assert writer.partial.exists()
    del writer
    assert list(tmp_path.iterdir()) == []


def test_bad_weights_are_named_by_their_tree(tmp_path, small):
    # They were reported under the tree 'vertices', which was fine.
    vertices = find_vertices(small.tracks.select_events(0, 2), backend="cpu")
    path = tmp_path / "pvs.root"
    write_vertices(path, vertices, with_weights=False)
    per_vertex = ak.unflatten(vertices.weights, np.diff(vertices.weight_offsets))
    per_vertex = ak.where(ak.local_index(per_vertex, axis=1) == 0, np.nan, per_vertex)
    counters = {"weight_counts": "n_vertices", "weights": "n_weights"}
    branches = {"weight_counts": ak.unflatten(np.diff(vertices.weight_offsets).astype(np.int32),
                                              vertices.counts),
                "weights": ak.unflatten(ak.flatten(per_vertex),
                                        ak.sum(ak.unflatten(ak.num(per_vertex),
                                                            vertices.counts), axis=1))}
    with uproot.update(path) as file:
        file.mktree("vertex_weights", {k: v.type for k, v in branches.items()},
                    counter_name=counters.__getitem__)
        file["vertex_weights"].extend(branches)
    with pytest.raises(ValueError, match=r"pvs.root:vertex_weights: vertices: weight nan of "
                                         r"vertex 0 in event 0"):
        read_vertices(path)


def test_one_path_as_bytes_is_one_file(small_file):
    # b"file.root" was iterated byte by byte: "expected str, bytes or os.PathLike, not int".
    chunks = list(iterate_tracks(os.fsencode(small_file)))
    assert sum(chunk.tracks.n_events for chunk in chunks) == read_tracks(small_file).n_events


def test_truth_of_other_tracks_is_refused_when_read(tmp_path, small):
    # A truth tree of 3 events beside 5 events of tracks, or labels pointing past an event's
    # MC PVs, made an MCTruth silently; validate() found only the first, later.
    path = tmp_path / "mixed.root"
    write_sample(path, small.tracks.select_events(0, 5), small.truth.select_events(0, 5,
                                                                                  small.tracks))
    labels = {"short": ak.Array([[0, -1], [], [0]]),  # 3 events of labels for 5 of truth
              "past": ak.Array([[0], [-1, 99], [], [], [-1]]),
              "halves": ak.Array([[0.5], [], [], [], []]),  # were truncated to 0
              "wide": ak.Array([[0], [2**32], [], [], []])}  # was cast to int32's 0
    with uproot.update(path) as file:
        for name, mc_pv in labels.items():
            file.mktree(name, {"mc_pv": mc_pv.type}, counter_name=lambda _: "n")
            file[name].extend({"mc_pv": mc_pv})
    with pytest.raises(ValueError, match="mixed.root:truth has 5 entries but .*:short has 3"):
        read_truth(path, tracks_tree="short")
    # The track within its event (it said track 2, its place in the file).
    with pytest.raises(ValueError, match=r"mixed.root:past: MC truth: the track in event 1 "
                                         r"\(track 1 of the event, 2 of the flat arrays\) points "
                                         r"to MC PV 99, which does not exist"):
        read_truth(path, tracks_tree="past")
    with pytest.raises(ValueError, match=r"mixed.root:wide: MC truth: the track in event 1 "
                                         r"\(track 0 of the event.*MC PV 4294967296"):
        read_truth(path, tracks_tree="wide")
    with pytest.raises(ValueError, match=r"mixed.root:halves: branch 'mc_pv' holds float64"):
        read_truth(path, tracks_tree="halves")


@pytest.mark.parametrize(("schema", "hint"), [
    ("tracks", r"\(TrackSchema\(tree=...\) names the tree\), got str"),
    ({"tree": "tracks"}, r"\(TrackSchema.from_mapping builds one\), got dict"),
    ({}, r"\(TrackSchema.from_mapping builds one\), got dict"),  # was the default (falsy)
])
def test_a_schema_of_another_type_is_refused_at_the_call(small_file, schema, hint):
    # iterate_tracks(path, "tracks"), as read_tracks takes a tree name second, failed at the
    # first chunk with "'str' object has no attribute 'tree'".
    for call in (lambda: iterate_tracks(small_file, schema),
                 lambda: inspect_tracks(small_file, schema),
                 lambda: read_tracks(small_file, schema=schema)):
        with pytest.raises(TypeError, match=f"schema must be a TrackSchema {hint}"):
            call()


def test_writer_states_are_refused_clearly(tmp_path, small, monkeypatch):
    vertices = find_vertices(small.tracks.select_events(0, 3), backend="cpu")
    (tmp_path / "outdir").mkdir()
    with pytest.raises(IsADirectoryError, match="outdir: a directory, not a file to write"):
        VertexWriter(tmp_path / "outdir")  # found out at the rename, with outdir.part left
    if hasattr(os, "mkfifo"):  # not on Windows
        os.mkfifo(tmp_path / "pipe")
        (tmp_path / "link.root").symlink_to(tmp_path / "pipe")
        for special in ("pipe", "link.root"):  # as /dev/null: the rename replaced it
            with pytest.raises(FileExistsError, match=f"{special}: a named pipe, not a file"):
                write_vertices(tmp_path / special, vertices)
        assert (tmp_path / "pipe").is_fifo()
        for special in ("pipe", "link.root"):
            (tmp_path / special).unlink()
    with VertexWriter(tmp_path / "pvs.root") as writer:
        writer.record_inputs(str(tmp_path / "run1.root"))  # was taken letter by letter
        writer.close()  # and leaving the block after it is no error
    assert recorded_inputs(tmp_path / "pvs.root") == [str((tmp_path / "run1.root").resolve())]
    with pytest.raises(ValueError, match="pvs.root: the writer is closed"):
        writer.write(vertices)  # uproot's 'cannot get data from a closed file'
    with pytest.raises(ValueError, match="the writer is closed"):
        writer.close()  # FileNotFoundError on pvs.root.part
    with pytest.raises(ValueError, match="the writer is closed"):
        writer.record_inputs(["late.root"])  # was ignored
    # A file that cannot be finished on leaving the block goes as on an error inside it.
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError, match="full"), VertexWriter(tmp_path / "late.root") as late:
        late.write(vertices)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "pvs.root"]


def test_writers_name_arguments_of_the_wrong_kind(tmp_path, small):
    # awkward's "no field named 'to_host'", numpy's "has no attribute 'items'" and
    # "'float' object cannot be interpreted as an integer" before.
    vertices = find_vertices(small.tracks.select_events(0, 3), backend="cpu")
    for wrong in (vertices.to_awkward(), find_vertices(small.tracks.select_events(0, 3),
                                                       backend="cpu", weights=False).to_awkward(),
                  {"x": vertices.x}):
        with pytest.raises(TypeError, match="vertices must be a VertexBatch"):
            write_vertices(tmp_path / "a.root", wrong)
    with pytest.raises(TypeError, match="event_ids must map branch names to arrays"):
        write_vertices(tmp_path / "b.root", vertices, event_ids=np.arange(3))
    with pytest.raises(ValueError, match="events_per_basket must be a positive integer, got 2.5"):
        write_sample(tmp_path / "c.root", small.tracks, events_per_basket=2.5)
    with pytest.raises(ValueError, match="events_per_basket must be a positive integer, got True"):
        write_sample(tmp_path / "c.root", small.tracks, events_per_basket=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("damage", "message"), [
    # Offsets from 1 wrote every event shifted by a vertex, without a word; the others raised
    # awkward's "structure imposed by 'counts' does not fit".
    (lambda v: {"offsets": v.offsets + 1}, "vertices offsets must start at 0, got 1"),
    (lambda v: {"offsets": np.minimum(v.offsets, v.n_vertices - 1)},
     "vertices offsets end at"),
    (lambda v: {"y": v.y[:-1]}, r"vertices: field 'y' has \d+ entries but x has \d+"),
    (lambda v: {"weights": v.weights[:-1]},
     r"vertices weight offsets end at \d+ but the weights hold \d+ entries"),
    (lambda v: {"weight_offsets": v.weight_offsets[:-1]},
     "vertices: weight_offsets needs one entry per vertex and one"),
    # These were written, and the reader refused the file; the event was named as vertex.
    (lambda v: {"weight_offsets": v.weight_offsets - (np.arange(len(v.weight_offsets)) == 1)},
     "vertices: vertex 1 of event 0 has"),
    (lambda v: {"weight_offsets": np.where(np.arange(len(v.weight_offsets)) == 2,
                                           v.weight_offsets[3] + 1, v.weight_offsets)},
     "vertices weight offsets decrease at vertex 2$"),
    (lambda v: {"weights": np.where(np.arange(len(v.weights)) == 7, np.nan, v.weights)},
     r"vertices: weight nan of vertex 0 in event 0 is not in \[0, 1\]"),
])
def test_a_batch_whose_offsets_do_not_cut_its_fields_is_not_written(tmp_path, small, damage,
                                                                     message):
    # The constructor checks no structure, and the branches are cut by the offsets.
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    assert vertices.counts[0] >= 3
    damaged = dataclasses.replace(vertices, **damage(vertices))
    for counts in (small.tracks.counts[:5], None):  # with the per-track branches and without
        with pytest.raises(ValueError, match=f"bad.root: {message}"):
            write_vertices(tmp_path / "bad.root", damaged, track_counts=counts)
    assert list(tmp_path.iterdir()) == []
    if "weight" in next(iter(damage(vertices))):  # weights not written are not looked at
        write_vertices(tmp_path / "no_weights.root", damaged, with_weights=False)
        assert_same_vertices(read_vertices(tmp_path / "no_weights.root"), vertices,
                             weights=False)


def test_a_refused_sample_leaves_the_file_it_would_replace(tmp_path, small, monkeypatch):
    # The file was recreated before the input was checked: a good sample was lost to a
    # truth of other events, or to a precision ROOT has no type for.
    path = tmp_path / "keep.root"
    write_sample(path, small.tracks, small.truth)
    before = path.read_bytes()
    other_truth = simulate(3, seed=1).truth
    with pytest.raises(ValueError, match="MC truth has 3 events"):
        write_sample(path, small.tracks, other_truth)
    with pytest.raises(ValueError, match="precision must be float32 or float64, got float16"):
        write_sample(path, small.tracks, precision=np.float16)
    # Wrapped buffers' offsets are not scanned: running backwards, they were written, and the
    # file could not be read ("branch 'x' is damaged: its data give entry 2 -3 values").
    offsets = np.array(small.tracks.offsets)
    offsets[2] = offsets[3] + 3
    backwards = TrackBatch.from_buffers(offsets, **{name: getattr(small.tracks, name)
                                                    for name in TRACK_FIELDS})
    for truth in (None, small.truth):  # numpy's "repeats may not contain negative values"
        with pytest.raises(ValueError, match="keep.root: tracks offsets decrease at event 2$"):
            write_sample(path, backwards, truth)
    with pytest.raises(TypeError, match="tracks must be a TrackBatch"):
        write_sample(path, small.tracks.to_awkward())
    with pytest.raises(TypeError, match="truth must be an MCTruth, got TrackBatch"):
        write_sample(path, small.tracks, small.tracks)
    # Stopped while writing (Ctrl-C, a full disk): the old file stays, no .part is left.
    import pvfinder.io

    def interrupted(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pvfinder.io, "_write_tree", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_sample(path, small.tracks, small.truth)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.root"]  # no .part left


def test_two_writers_of_one_output_each_finish_a_whole_file(tmp_path, small):
    # Both wrote OUT.part: the first rename took the second's file, which the second then
    # could not rename, and the output held one job's vertices under the other's success.
    output = tmp_path / "pvs.root"
    one, other = (find_vertices(small.tracks.select_events(start, start + 5), backend="cpu")
                  for start in (0, 5))
    first, second = VertexWriter(output), VertexWriter(output)
    assert first.partial != second.partial
    first.write(one)
    second.write(other)
    first.close()
    assert_same_vertices(read_vertices(output), one, weights=False)
    second.close()
    assert_same_vertices(read_vertices(output), other, weights=False)
    assert [path.name for path in tmp_path.iterdir()] == ["pvs.root"]


def test_a_link_to_a_missing_folder_is_not_followed_to_make_it(tmp_path, small):
    # The folders of the link's target were made, wherever it pointed.
    (tmp_path / "dangling.root").symlink_to(tmp_path / "missing" / "pvs.root")
    with pytest.raises(FileNotFoundError, match="dangling.root: a link to .*missing/pvs.root, "
                                                "whose folder does not exist"):
        VertexWriter(tmp_path / "dangling.root")
    assert not (tmp_path / "missing").exists()


def test_an_output_that_is_a_link_is_written_through(tmp_path, small):
    # The rename from .part replaced the link with a file, where open() writes through it.
    store = tmp_path / "store"
    store.mkdir()
    for name, write in (("tracks.root", lambda p: write_sample(p, small.tracks)),
                        ("pvs.root", lambda p: write_vertices(p, find_vertices(
                            small.tracks.select_events(0, 3), backend="cpu")))):
        (store / name).write_bytes(b"old")
        (tmp_path / name).symlink_to(store / name)
        write(tmp_path / name)
        assert (tmp_path / name).is_symlink() and (store / name).read_bytes() != b"old"
    assert read_tracks(tmp_path / "tracks.root").n_events == small.tracks.n_events
    assert sorted(p.name for p in store.iterdir()) == ["pvs.root", "tracks.root"]


def test_writing_under_a_file_names_the_file_in_the_way(tmp_path, small):
    blocking = tmp_path / "runs"
    blocking.write_text("a file, not a directory")
    with pytest.raises(NotADirectoryError, match=r"pvs.root: cannot be written, .*runs is a file"):
        VertexWriter(blocking / "2024" / "pvs.root")
    with pytest.raises(NotADirectoryError, match=r"runs is a file, not a directory"):
        write_sample(blocking / "sample.root", small.tracks.select_events(0, 2))
    assert blocking.read_text() == "a file, not a directory"



@pytest.mark.parametrize("ids", [np.array([0.5, 1.5, 2.5, 3.5, 4.5]), np.arange(4)],
                         ids=["floats", "one short"])
def test_writer_refuses_event_ids_it_cannot_store(tmp_path, small, ids):
    # Branches hold integers, one per event: 0.5 was stored as 0, a short array as whatever
    # uproot made of it.
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    with pytest.raises(ValueError, match="'event_number' must be one integer per event"), \
            VertexWriter(tmp_path / "pvs.root") as writer:
        writer.write(vertices, {"event_number": ids})
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_identifiers_exact_across_writes(tmp_path, small):
    # The first write fixes each identifier's branch type: later values it cannot hold are
    # refused, not wrapped (-50 became 18446744073709551566 under uint64), and a different
    # set of identifiers is named as such.
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    first = {"event_number": np.arange(5, dtype=np.uint64)}
    with pytest.raises(ValueError, match="'event_number' runs from -50 to -46, beyond the "
                                         "uint64"), VertexWriter(tmp_path / "a.root") as writer:
        writer.write(vertices, first)
        writer.write(vertices, {"event_number": np.arange(-50, -45)})
    with pytest.raises(ValueError, match=r"bring the identifiers \(event_number, run_number\) "
                                         r"but the file holds \(event_number\)"), \
            VertexWriter(tmp_path / "b.root") as writer:
        writer.write(vertices, first)
        writer.write(vertices, first | {"run_number": np.zeros(5, np.int32)})
    with VertexWriter(tmp_path / "c.root") as writer:  # values that fit are cast and kept
        writer.write(vertices, first)
        writer.write(vertices, {"event_number": np.arange(5, 10, dtype=np.int32)})
    stored = uproot.open(tmp_path / "c.root")["vertices"]["event_number"].array(library="np")
    assert stored.tolist() == list(range(10))
    # Events of none fix nothing: an empty input merged first gave the file its int16
    # identifiers (or none but event_number), and every later input was refused.
    with VertexWriter(tmp_path / "d.root") as writer:
        writer.write(vertices.select_events(0, 0), {"run_number": np.zeros(0, np.int16)})
        writer.write(vertices, {"run_number": np.full(5, 885044293, np.int64),
                                "event_number": first["event_number"]})
        writer.write(vertices.select_events(0, 0), {"other": np.zeros(0, np.int8)})  # after
    stored = uproot.open(tmp_path / "d.root")["vertices"].arrays(library="np")
    assert stored["run_number"].dtype == np.int64 and stored["run_number"][0] == 885044293
    # A file of no events at all keeps the branches its events would have had.
    with VertexWriter(tmp_path / "e.root", with_weights=True) as writer:
        writer.write(vertices.select_events(0, 0), {"run_number": np.zeros(0, np.int32)},
                     np.zeros(0, np.int64))
    with uproot.open(tmp_path / "e.root") as file:
        assert file["vertices"]["run_number"].typename == "int32_t"
        assert {"vertex_index", "weight"} <= set(file["vertex_weights"].keys())

def test_writer_writes_batches_all_or_none(tmp_path, small):
    # The second batch's identifiers do not fit the types the first gives the file: neither
    # is written, and what was written before stays; without a refusal, a basket each.
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    counts = small.tracks.select_events(0, 5).counts
    ids = {"event_number": np.arange(5, dtype=np.uint64)}
    with VertexWriter(tmp_path / "pvs.root", with_weights=True) as writer:
        writer.write(vertices, ids, counts)
        with pytest.raises(ValueError, match="runs from -5 to -1, beyond the uint64"):
            writer.write_all([(vertices, ids, counts),
                              (vertices, {"event_number": np.arange(-5, 0)}, counts)])
        assert (writer.n_events, writer.n_vertices) == (5, vertices.n_vertices)
        writer.write_all([(vertices, ids, counts), (vertices, ids, counts)])
    with uproot.open(tmp_path / "pvs.root") as file:
        assert file["vertices"].num_entries == file["vertex_weights"].num_entries == 15
        assert file["vertices"]["x"].num_baskets == 3
    assert_same_vertices(read_vertices(tmp_path / "pvs.root"),
                         VertexBatch.concatenate([vertices] * 3))


def test_a_refused_first_batch_leaves_a_new_file_without_a_layout(tmp_path, small):
    # It made the trees with its identifiers before it was refused: the next, good batch
    # was then refused in its turn, and an empty file with the wrong identifiers was left.
    vertices = find_vertices(small.tracks.select_events(0, 5), backend="cpu")
    counts = small.tracks.select_events(0, 5).counts
    without_weights = find_vertices(small.tracks.select_events(0, 5), backend="cpu",
                                    weights=False)
    with VertexWriter(tmp_path / "pvs.root", with_weights=True) as writer:
        with pytest.raises(ValueError, match="the writer writes weights but the batch has none"):
            writer.write(without_weights, {"run": np.zeros(5, np.int64)}, counts)
        writer.write(vertices, None, counts)
    with uproot.open(tmp_path / "pvs.root") as file:
        assert "run" not in file["vertices"] and file["vertices"].num_entries == 5


@pytest.mark.parametrize("name", ["z", "n_vertices", "n_tracks"])
def test_vertex_identifiers_cannot_take_a_branch_s_name(tmp_path, small, name):
    # "z" and "n_tracks" were silently replaced by the vertex fields; n_vertices failed in
    # uproot.
    vertices = find_vertices(small.tracks.select_events(0, 2), backend="cpu")
    with pytest.raises(ValueError, match=f"identifier\\(s\\) {name} would take the name"), \
            VertexWriter(tmp_path / "pvs.root") as writer:
        writer.write(vertices, {name: np.arange(2)})
    assert list(tmp_path.iterdir()) == []


def test_writer_records_inputs_whatever_their_names(tmp_path, small):
    # JSON in the note: a newline in a name, or no input at all, comes back as it was.
    vertices = find_vertices(small.tracks.select_events(0, 3), backend="cpu")
    for inputs in ([tmp_path / "a\nb.root", tmp_path / "ü.root"], []):
        with VertexWriter(tmp_path / "pvs.root") as writer:
            writer.write(vertices)
            writer.record_inputs(inputs)
        assert recorded_inputs(tmp_path / "pvs.root") == [str(p.resolve()) for p in inputs]
    write_vertices(tmp_path / "plain.root", vertices)
    assert recorded_inputs(tmp_path / "plain.root") is None


# -- inputs given as URLs ----------------------------------------------------------------------


def test_every_reader_takes_a_url(tmp_path, small, small_file, remote):
    """A URL is read through fsspec, as uproot does; ``pathlib.Path`` folded its ``//``
    (``memory:/...``) and looked for a local file."""
    url = remote.put(small_file)
    assert_same_batch(read_tracks(url), read_tracks(small_file))
    # Behind a chained protocol (a local cache of the remote file), and a local file as a
    # file:// URL, read from this machine as uproot reads it.
    assert_same_batch(read_tracks(f"simplecache::{url}"), read_tracks(small_file))
    assert inspect_tracks(f"file://{small_file}").path == str(small_file)
    source = inspect_tracks(url)
    assert source.path == url and source.n_entries == small.tracks.n_events
    chunks = list(iterate_tracks(url, step_size=70))
    assert [chunk.path for chunk in chunks] == [url] * 3
    assert [chunk.entry_start for chunk in chunks] == [0, 70, 140]
    truth = read_truth(url)
    np.testing.assert_array_equal(truth.vertices.z, small.truth.vertices.z)
    np.testing.assert_array_equal(truth.track_mc_pv, small.truth.track_mc_pv)
    vertices = find_vertices(small.tracks, backend="cpu")
    with VertexWriter(tmp_path / "pvs.root", with_weights=True) as writer:
        writer.write(vertices, track_counts=small.tracks.counts)
        writer.record_inputs([url])
    vertex_url = remote.put(tmp_path / "pvs.root")
    assert_same_vertices(read_vertices(vertex_url), vertices)
    assert holds_weights(vertex_url) and recorded_inputs(vertex_url) == [url]


def assert_same_batch(found: TrackBatch, expected: TrackBatch) -> None:
    np.testing.assert_array_equal(found.offsets, expected.offsets)
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name), err_msg=name)


class _Connection:
    """Reads of the in-memory storage (uproot reads through ``cat_file``), counted; the
    connection drops once ``answers`` of them were answered (never when None)."""

    def __init__(self, monkeypatch):
        self.answers: int | None = None
        self.reads = 0
        cat_file = fsspec.implementations.memory.MemoryFileSystem.cat_file

        def read(filesystem, path, start=None, end=None, **kwargs):
            if self.answers is not None and self.reads >= self.answers:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.reads += 1
            return cat_file(filesystem, path, start, end, **kwargs)

        monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "cat_file", read)

    def drop_after(self, answers: int | None) -> None:
        self.answers, self.reads = answers, 0


def test_a_url_that_cannot_be_read_is_an_error_naming_it(tmp_path, small_file, remote,
                                                         monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(remote.url('nope.root'))}: no such file"):
        read_tracks(remote.url("nope.root"))
    (tmp_path / "text.root").write_text("hello")
    url = remote.put(tmp_path / "text.root")
    with pytest.raises(ValueError, match=f"^{re.escape(url)}: not a ROOT file"):
        read_tracks(url)
    (tmp_path / "half.root").write_bytes(small_file.read_bytes()[:5000])
    url = remote.put(tmp_path / "half.root")
    with pytest.raises(ValueError, match=f"^{re.escape(url)}: truncated ROOT file \\(5000 bytes"):
        read_tracks(url)
    with pytest.raises(ValueError, match=r"^nosuch://host/a.root: cannot be read \(ValueError: "
                                         r"Protocol not known: nosuch\)"):
        inspect_tracks("nosuch://host/a.root")
    # A protocol fsspec knows, whose package is not installed here (as root:// without
    # fsspec-xrootd): the message says what to install.
    monkeypatch.setitem(known_implementations, "pvfinder-absent", {
        "class": "pvfinder_absent_module.FileSystem",
        "err": "Install pvfinder-absent to read these"})
    with pytest.raises(ValueError, match="^pvfinder-absent://host/a.root: cannot be read here: "
                                         "Install pvfinder-absent to read these"):
        read_truth("pvfinder-absent://host/a.root")


def test_a_connection_that_drops_is_an_error_naming_the_url(small_file, remote, monkeypatch):
    """As the file is opened (its header, then uproot's first reads) an OSError; once open
    (a tree, the baskets) a ValueError naming tree and entries too. Never called damage."""
    url = remote.put(small_file)
    connection = _Connection(monkeypatch)
    holds_weights(url)  # opens the file and looks at its keys: no tree is read
    file_opened = connection.reads
    source = inspect_tracks(url)
    tree_opened = connection.reads - file_opened
    dropped = r"\(ConnectionResetError: \[Errno 104\] Connection reset by peer\)"
    for answers, error, message in [
            (0, OSError, f"^{re.escape(url)}: cannot be read {dropped}"),
            (1, OSError, f"^{re.escape(url)}: cannot be read {dropped}"),
            (file_opened, ValueError, f"^{re.escape(url)}:tracks: cannot be read {dropped}"),
            (tree_opened, ValueError,
             f"^{re.escape(url)}:tracks: cannot read the entries from 0 on {dropped}")]:
        connection.drop_after(answers)
        with pytest.raises(error, match=message):
            list(source.read_chunks())
    connection.drop_after(file_opened)
    with pytest.raises(ValueError, match=f"^{re.escape(url)}:truth: cannot be read {dropped}"):
        read_truth(url)


class _Answer(Exception):
    """An HTTP client's error: the server's status, and its reason as the message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@pytest.mark.parametrize(("cause", "error", "said"), [
    (RuntimeError("Server disconnected"), OSError,
     "cannot be read \\(RuntimeError: Server disconnected\\)"),
    (_Answer(403, "Forbidden"), OSError, "cannot be read \\(_Answer: Forbidden\\)"),
    (_Answer(404, "Not Found"), FileNotFoundError, "no such file"),
    (TimeoutError(), OSError, "cannot be read \\(TimeoutError\\)"),  # no message: its kind
])
def test_only_a_missing_file_is_called_missing(small_file, remote, monkeypatch, cause, error,
                                               said):
    """fsspec's HTTP client raises FileNotFoundError for any failed request (a dropped
    connection, a refusal), with the real failure as its cause."""
    url = remote.put(small_file)

    def size(filesystem, path):
        raise FileNotFoundError(path) from cause

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "size", size)
    with pytest.raises(OSError, match=f"^{re.escape(url)}: {said}$") as raised:
        inspect_tracks(url)
    assert type(raised.value) is error


def test_which_names_are_urls(small_file):
    assert is_url("root://host//data/run1.root") and is_url(b"root://host//data/run1.root")
    assert is_url("simplecache::https://host/run1.root")
    assert not is_url("C://data/run1.root")  # a Windows drive
    assert not is_url(pathlib.Path("root:/host/run1.root"))
    for local in ("file", "local"):  # uproot reads these as local files
        assert not is_url(f"{local}://{small_file}")
        assert inspect_tracks(f"{local}://{small_file}").path == str(small_file)


class _ServerDisconnected(Exception):
    """As aiohttp's: a network failure that is no OSError."""


@pytest.mark.parametrize(("raised", "error", "said"), [
    (_ServerDisconnected("Server disconnected"), OSError,
     "cannot be read \\(_ServerDisconnected: Server disconnected\\)"),
    (uproot.deserialization.DeserializationError("expected 8 bytes", None, None, {}, "f"),
     ValueError, "not a readable ROOT file \\(DeserializationError: expected 8 bytes\\)")])
def test_a_url_that_uproot_cannot_open_names_the_network_or_the_contents(
        small_file, remote, monkeypatch, raised, error, said):
    """Past the header check, a failure other than of the file's contents is the network's."""
    url = remote.put(small_file)

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(uproot, "open", fail)
    with pytest.raises(error, match=f"^{re.escape(url)}: {said}$"):
        inspect_tracks(url)


def test_a_local_name_with_a_double_colon_is_that_file(tmp_path, small):
    """uproot takes a name it is given to write for an fsspec URL, whose '::' chains
    protocols: run::1.root was written as a file 'run:' (and the rename then failed)."""
    tracks = small.tracks.select_events(0, 5)
    write_sample(tmp_path / "run::1.root", tracks)
    write_vertices(tmp_path / "run::1_pvs.root", find_vertices(tracks, backend="cpu"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run::1.root", "run::1_pvs.root"]
    assert read_tracks(tmp_path / "run::1.root").n_events == 5
    assert read_vertices(tmp_path / "run::1_pvs.root").n_events == 5


def test_files_are_written_on_this_machine_not_to_a_url(tmp_path, small, monkeypatch):
    """A URL given to a writer made a folder ``memory:`` (or ``root:``) here and wrote there."""
    monkeypatch.chdir(tmp_path)
    vertices = find_vertices(small.tracks.select_events(0, 3), backend="cpu")
    local = VertexWriter(f"file://{tmp_path}/local.root")  # a file:// URL is local
    assert local.path == tmp_path / "local.root"
    local.discard()
    for write in (lambda url: VertexWriter(url),
                  lambda url: write_vertices(url, vertices),
                  lambda url: write_sample(url, small.tracks)):
        with pytest.raises(ValueError, match="^root://host//out.root: a URL; pvfinder writes "
                                             "files on this machine only"):
            write("root://host//out.root")
    assert [path.name for path in tmp_path.iterdir()] == []


@pytest.mark.parametrize("step_size", [37, 200, "1 KB", "100 MB"])
def test_entry_steps_are_the_chunks_read(small_file, step_size):
    """The Dask partitions (entry_steps) and the chunks of one process (read_chunks) agree."""
    source = inspect_tracks(small_file)
    chunks = [(chunk.entry_start, chunk.entry_stop)
              for chunk in source.read_chunks(parse_step_size(step_size))]
    assert source.entry_steps(parse_step_size(step_size)) == chunks
    empty = dataclasses.replace(source, n_entries=0)
    assert empty.entry_steps(step_size) == [(0, 0)]  # one empty partition, as uproot makes


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "file://"])
def test_an_empty_name_is_no_file(name, tmp_path, small, monkeypatch):
    """Path("") is the current directory: read as "a directory, not a ROOT file", written as
    "a directory, not a file to write"."""
    monkeypatch.chdir(tmp_path)
    for use in (inspect_tracks, read_tracks, read_truth, read_vertices, VertexWriter,
                lambda path: write_sample(path, small.tracks)):
        with pytest.raises(ValueError, match=f"^'{name}' names no file$"):
            use(name)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_not_root_and_truncated(tmp_path, small_file):
    with pytest.raises(FileNotFoundError, match="nope.root: no such file"):
        read_tracks(tmp_path / "nope.root")
    with pytest.raises(ValueError, match="a directory, not a ROOT file"):  # not "no such file"
        read_tracks(tmp_path)
    with pytest.raises(ValueError, match="/dev/null: a character device, not a ROOT file"):
        read_tracks("/dev/null")
    text = tmp_path / "text.root"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.root: not a ROOT file"):
        read_tracks(text)
    truncated = tmp_path / "truncated.root"
    data = small_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"truncated.root: truncated ROOT file "
                                         f"\\({len(data) // 2} bytes, but its header says"):
        read_tracks(truncated)


def test_damaged_basket_names_the_entries(tmp_path, small_file):
    data = bytearray(small_file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)  # zeros over compressed track data
    damaged = tmp_path / "damaged.root"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.root:tracks: cannot read the entries from \d+"):
        list(iterate_tracks(damaged, step_size=50))


def _flip_bytes(path, start, stop, to):
    data = bytearray(path.read_bytes())
    for i in range(start, stop):
        data[i] ^= 0xFF
    to.write_bytes(bytes(data))
    return to


def test_damaged_tree_record_is_an_error_naming_the_tree(tmp_path, small, small_file):
    # uproot's DeserializationError (not a ValueError) ended reconstruct with a traceback.
    start = uproot.open(small_file).key("tracks").fSeekKey
    damaged = _flip_bytes(small_file, start + 60, start + 64, tmp_path / "damaged.root")
    with pytest.raises(ValueError, match=r"damaged.root:tracks: damaged, cannot be read "
                                         r"\(DeserializationError: expected \d+ bytes"):
        inspect_tracks(damaged)
    # In a folder too: uproot's classname_of reads the object there, which escaped.
    tracks = small.tracks.select_events(0, 3)
    nested = write_tree(tmp_path / "nested.root", {name: np.asarray(getattr(tracks, name))
                                                   for name in TRACK_FIELDS},
                        tracks.counts, tree="Dir/tracks")
    start = uproot.open(nested)["Dir"].key("tracks").fSeekKey
    damaged = _flip_bytes(nested, start + 60, start + 64, tmp_path / "nested_damaged.root")
    with pytest.raises(ValueError, match=r"nested_damaged.root:Dir/tracks: damaged, cannot be "
                                         r"read \(DeserializationError"):
        inspect_tracks(damaged, TrackSchema(tree="Dir/tracks"))


def test_damaged_baskets_of_truth_and_vertices_are_errors_naming_the_tree(tmp_path, small):
    # zlib.error escaped read_truth and read_vertices (the validation of reconstruct, and
    # validate) and read_event_ids.
    from pvfinder.io import read_event_ids

    def damage(path, tree, branch):
        basket = uproot.open(path)[tree][branch]
        seek, size = int(basket.member("fBasketSeek")[0]), int(basket.member("fBasketBytes")[0])
        return _flip_bytes(path, seek + size // 2, seek + size // 2 + 20,
                           tmp_path / f"{path.stem}_{branch}.root")

    write_sample(tmp_path / "s.root", small.tracks, small.truth, compression="zlib")
    sample = tmp_path / "s.root"
    with pytest.raises(ValueError, match=r"s_mc_pv.root:tracks: damaged, cannot be read "
                                         r"\(error: Error -3"):
        read_truth(damage(sample, "tracks", "mc_pv"))
    write_vertices(tmp_path / "v.root", find_vertices(small.tracks, backend="cpu"),
                   compression="zlib")
    with pytest.raises(ValueError, match=r"v_x.root:vertices: damaged"):
        read_vertices(damage(tmp_path / "v.root", "vertices", "x"))
    with pytest.raises(ValueError, match=r"v_event_number.root:vertices: damaged"):
        read_event_ids(damage(tmp_path / "v.root", "vertices", "event_number"), "vertices")


class _DumpingError(uproot.deserialization.DeserializationError):
    """uproot's DeserializationError, which says what went wrong in .message and dumps the
    bytes it read in str()."""

    def __init__(self) -> None:
        super().__init__("expected 24 bytes", None, None, {}, "f.root")

    def __str__(self) -> str:
        return "while reading\n\n    TTree version 20 (8132 bytes)\n..."


@pytest.mark.parametrize(("raised", "said"), [
    (ValueError("cannot reshape"), "ValueError: cannot reshape"),
    (KeyError("fBasketSeek"), "KeyError: 'fBasketSeek'"),
    (NotImplementedError("version 99"), "NotImplementedError: version 99"),
    (_DumpingError(), r"_DumpingError: expected 24 bytes\)$"),
    (OSError("expected Chunk of length 325,\nreceived 0 bytes"),  # uproot's, no errno
     r"OSError: expected Chunk of length 325, received 0 bytes\)$"),
])
def test_whatever_uproot_raises_reading_is_an_error_naming_the_tree(raised, said):
    from pvfinder.io import _reading

    with pytest.raises(ValueError, match=r"^f.root:t: damaged, cannot be read \(" + said), \
            _reading("f.root:t"):
        raise raised
    with pytest.raises(PermissionError), _reading("f.root:t"):  # the system's: names the file
        raise PermissionError(13, "Permission denied", "f.root")


def test_a_damaged_record_of_inputs_is_called_damaged(tmp_path, small):
    # It was called "not a list of paths", which names another mistake.
    path = tmp_path / "pvs.root"
    with VertexWriter(path) as writer:
        writer.write(find_vertices(small.tracks.select_events(0, 5), backend="cpu"))
        writer.record_inputs(["/runs/a.root"])
    key = uproot.open(path).key("pvfinder_inputs")
    start = key.fSeekKey + key.fKeylen + 12  # the string's header
    damaged = _flip_bytes(path, start, start + 4, tmp_path / "damaged.root")
    with pytest.raises(ValueError, match="damaged.root:pvfinder_inputs: damaged, cannot be read"):
        recorded_inputs(damaged)


def test_a_damaged_folder_beside_the_vertices_is_called_damaged(tmp_path, small):
    # Looking up a name the file lacks lists every folder's keys, and a damaged folder's
    # DeserializationError escaped holds_weights and read_vertices.
    path = tmp_path / "pvs.root"
    write_vertices(path, find_vertices(small.tracks.select_events(0, 5), backend="cpu"),
                   with_weights=False)
    with uproot.update(path) as file:
        file.mkdir("Dir").mktree("velo", {"a": "int64"})
    keys = uproot.open(path)["Dir"]._fSeekKeys  # the folder's list of keys
    damaged = _flip_bytes(path, keys + 48, keys + 52, tmp_path / "damaged.root")
    for read in (holds_weights, read_vertices):
        with pytest.raises(ValueError, match="damaged.root:vertex_weights: damaged, cannot be "
                                             "read"):
            read(damaged)


def test_a_tree_path_through_a_tree_is_no_tree(small_file):
    # uproot seeks the key "x" inside the TTree: AttributeError.
    for path in ("tracks/", "tracks/x"):
        with pytest.raises(ValueError, match=f"no tree '{path}' \\(trees in the file: "
                                             "tracks, truth\\)"):
            read_tracks(small_file, tree=path)


def test_list_of_negative_length_is_called_damage_not_a_mismatch():
    from pvfinder.io import _flatten_jagged

    # Damaged bytes that uproot reads without complaint can make list offsets decrease.
    good = ak.Array([[1.0, 2.0], [3.0]])
    bad = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(np.array([0, 2, 1])),
                                               ak.contents.NumpyArray(np.arange(3.0))))
    with pytest.raises(ValueError, match="f.root:tracks: branch 'y' is damaged: its data give "
                                         "entry 11 -1 values"):
        _flatten_jagged({"x": good, "y": bad}, "f.root:tracks", entry_start=10)
    # Offsets that jump up before they come down: the damage, not the first difference.
    up_down = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(np.array([0, 5, 3, 3])),
                                                   ak.contents.NumpyArray(np.arange(5.0))))
    with pytest.raises(ValueError, match="branch 'y' is damaged: its data give entry 1 -2"):
        _flatten_jagged({"x": ak.Array([[1.0], [2.0], [3.0]]), "y": up_down}, "f.root:tracks")
    with pytest.raises(ValueError, match="branch 'y' is damaged"):  # a branch read alone
        _flatten_jagged({"y": up_down}, "f.root:tracks")


def test_missing_tree_and_branch(tmp_path):
    path = tmp_path / "partial.root"
    counts = [2, 1]
    with uproot.recreate(path) as file:
        file["ntuple"] = {"a": np.arange(3)}  # uproot writes an RNTuple: not a tree to offer
        file.mktree("other", {"a": "int64"})
        file.mkdir("Dir").mktree("velo", {"a": "int64"})  # offered with its folder
        file.mktree("tracks", {name: "var * float64" for name in ("x", "y")},
                    counter_name=lambda _: "n_tracks")
        file["tracks"].extend({name: ak.unflatten(np.ones(3), counts) for name in ("x", "y")})
    with pytest.raises(ValueError, match=r"no tree 'velo' \(trees in the file: Dir/velo, "
                                         r"other, tracks\)"):
        read_tracks(path, tree="velo")
    with pytest.raises(ValueError, match=r"partial.root:tracks: missing branch.*z, tx.*--branch"):
        read_tracks(path)


def test_branches_of_mismatched_lengths_name_the_entry(tmp_path):
    path = tmp_path / "mismatch.root"
    fields = {name: ak.unflatten(np.ones(6), [2, 1, 3]) for name in TRACK_FIELDS}
    fields["ty"] = ak.unflatten(np.ones(6), [2, 2, 2])
    with uproot.recreate(path) as file:  # one counter per branch: lengths may differ
        file.mktree("tracks", {name: a.type for name, a in fields.items()})
        file["tracks"].extend(fields)
    with pytest.raises(ValueError, match="mismatch.root:tracks: branch 'ty' has 2 values in "
                                         "entry 1 but branch 'x' has 1"):
        read_tracks(path)


@pytest.mark.parametrize(("kind", "typename"), [("string", "char*"), ("var * bool", "bool[]"),
                                                ("float64", "double")])
def test_non_numeric_or_flat_branch(tmp_path, kind, typename):
    path = tmp_path / "typed.root"
    data = {"string": ak.Array(["a", "bb"]), "var * bool": ak.Array([[True], [False]]),
            "float64": np.ones(2)}[kind]
    with uproot.recreate(path) as file:
        file.mktree("tracks", {"x": kind, **{n: "var * float64" for n in TRACK_FIELDS[1:]}},
                    counter_name=lambda _: "n")
        file["tracks"].extend({"x": data, **{n: ak.Array([[1.0], [1.0]]) for n in TRACK_FIELDS[1:]}})
    message = f"typed.root:tracks: branch 'x' holds '{typename}', not a list of numbers per entry"
    with pytest.raises(ValueError, match=re.escape(message)):
        inspect_tracks(path)


def test_an_identifier_branch_of_floats_says_how_to_leave_it_out(tmp_path, small):
    # Identifiers are optional, but one that is there must be integers: the error says how
    # to read the tracks without it, and that way works.
    tracks = small.tracks.select_events(0, 4)
    fields = {name: np.asarray(getattr(tracks, name)) for name in TRACK_FIELDS}
    path = write_tree(tmp_path / "ids.root", fields, tracks.counts,
                      flat={"event_number": np.arange(4.0)})
    with pytest.raises(ValueError, match=re.escape(
            "ids.root:tracks: branch 'event_number' holds 'double', not one integer per entry; "
            "event identifiers are optional: leave it out with a schema whose event_ids")):
        inspect_tracks(path)
    assert read_tracks(path, schema=TrackSchema(event_ids=())).n_events == 4


def test_an_identifier_branch_named_but_absent_is_warned_of(tmp_path, small):
    # A missing identifier is normal for the default names, but one the user named is
    # likely a typo: it was silently left out.
    path = tmp_path / "s.root"
    write_sample(path, small.tracks.select_events(0, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inspect_tracks(path)  # the default names: quiet whatever is there
    typo = TrackSchema(event_ids=("event_number", "evt_number"))
    with pytest.warns(UserWarning, match=re.escape(
            "no event identifier branch evt_number; the vertices carry event_number (integer "
            "branches with one value per event: event_number, n_tracks)")):
        assert list(inspect_tracks(path, typo).event_ids) == ["event_number"]
    with pytest.warns(UserWarning, match="the vertices carry event_number counting the entr"):
        inspect_tracks(path, TrackSchema(event_ids=("evt_number",)))


@pytest.mark.parametrize("name", ["x", "n_tracks", "n_pvs"])
def test_sample_identifiers_cannot_take_a_branch_s_name(tmp_path, small, name):
    # "x" silently replaced the tracks' x by the identifiers; n_tracks failed inside uproot.
    with pytest.raises(ValueError, match=f"identifier\\(s\\) {name} would take the name"):
        write_sample(tmp_path / "s.root", small.tracks, small.truth,
                     event_ids={name: np.arange(small.tracks.n_events)})
    assert not (tmp_path / "s.root").exists()


def test_rntuple_is_not_a_ttree(tmp_path):
    path = tmp_path / "rntuple.root"
    with uproot.recreate(path) as file:
        file["tracks"] = {"x": ak.Array([[1.0], [2.0]])}
    with pytest.raises(ValueError, match="'tracks' is a ROOT::RNTuple, not a TTree"):
        read_tracks(path)


def test_nan_state_names_branch_and_entry(tmp_path, small):
    tracks = small.tracks.select_events(0, 80)
    fields = {f"velo_{name}": np.asarray(getattr(tracks, name)).copy() for name in TRACK_FIELDS}
    fields["velo_tx"][tracks.offsets[57] + 4] = np.nan
    path = write_tree(tmp_path / "nan.root", fields, tracks.counts)
    schema = TrackSchema(branches={name: f"velo_{name}" for name in TRACK_FIELDS})
    with pytest.raises(ValueError, match=r"nan.root:tracks: branch 'velo_tx' is nan in entry 57 "
                                         r"\(track 4 of that entry\)"):
        list(iterate_tracks(path, schema, step_size=20))  # entry 57 is in the third chunk


# How ROOT stores a list of numbers per entry besides a leaf with a counter (all uproot
# writes): ``encode(values) -> (bytes of each value, the values read back, interpretation)``,
# the interpretation being the one uproot gives such a branch of a file that ROOT wrote.
# uproot cannot write them, so the test writes their bytes and tells uproot how ROOT would
# have described them.
def _stl_vector(dtype):
    def encode(values):  # the numbers, big-endian (ROOT writes a header before them)
        stored = np.asarray(values, dtype)
        return (stored.view(np.uint8).reshape(len(stored), -1), stored.astype(dtype[1:]),
                AsJagged(AsDtype(dtype), header_bytes=10))
    return encode


def _double32(values):
    """Double32_t[low,high,24]: an unsigned integer of 24 bits on a range that holds the
    branch's values, as a user would choose it for each branch ([0, high] for variances)."""
    values = np.asarray(values, np.float64)
    high = 2.0 ** (np.floor(np.log2(np.abs(values).max())) + 1)
    low, bits = (0.0 if values.min() >= 0 else -high), 24
    step = (high - low) / 2**bits
    packed = np.round((values - low) / step).astype(">u4")
    return (packed.view(np.uint8).reshape(-1, 4), low + packed * step,
            AsJagged(AsDouble32(low, high, bits)))


def _float16(values):
    """Float16_t without a range: the float's exponent byte, then its sign and the 12 leading
    bits of its mantissa; the values keep only those 12 bits, so ROOT's rounding drops none."""
    bits = np.asarray(values, np.float32).view(np.uint32) & np.uint32(0xFFFFF800)
    raw = np.empty((len(bits), 3), np.uint8)
    raw[:, 0] = (bits >> 23) & 0xFF
    mantissa = ((bits >> 11) & 0xFFF) | ((bits >> 31) << 13)
    raw[:, 1:] = mantissa.astype(">u2").view(np.uint8).reshape(-1, 2)
    return raw, bits.view(np.float32), AsJagged(AsFloat16(0.0, 0.0, 12))


def _stl_header(n_values, n_bytes):
    """What ROOT writes before a std::vector's numbers: its byte count (flagged), the class
    version and the number of elements."""
    head = np.array([0x40000000 | (6 + n_bytes)], ">u4").view(np.uint8)
    return np.concatenate([head, np.array([0, 9], np.uint8),
                           np.array([n_values], ">u4").view(np.uint8)])


_ROOT_LISTS = {"std::vector<float>": _stl_vector(">f4"), "std::vector<double>": _stl_vector(">f8"),
               "Double32_t[low,high,24]": _double32, "Float16_t": _float16}


def write_root_lists(path, tracks, kind, monkeypatch):
    """Write the tracks' fields as ROOT stores them as lists of ``kind`` (see
    ``_ROOT_LISTS``), have uproot read the file's branches so, and return the numbers they
    stand for."""
    stored, expected, interpretations = {}, {}, {}
    for name in TRACK_FIELDS:
        raw, expected[name], interpretations[name] = _ROOT_LISTS[kind](
            np.asarray(getattr(tracks, name)))
        stl = interpretations[name].header_bytes > 0
        entries = []
        for start, stop in zip(tracks.offsets[:-1], tracks.offsets[1:]):
            body = raw[start:stop].ravel()
            entries.append(np.concatenate([_stl_header(stop - start, body.size), body])
                           if stl else body)
        stored[name] = ak.Array(entries)
    with uproot.recreate(path) as file:
        file.mktree("tracks", {name: "var * uint8" for name in TRACK_FIELDS},
                    counter_name=lambda name: f"bytes_{name}")
        file["tracks"].extend(stored)
    identify = uproot.interpretation.identify.interpretation_of
    monkeypatch.setattr(uproot.interpretation.identify, "interpretation_of",
                        lambda branch, context, simplify=True: interpretations[branch.name]
                        if branch.name in TRACK_FIELDS and branch.file.file_path == str(path)
                        else identify(branch, context, simplify))
    return expected


@pytest.mark.parametrize("kind", list(_ROOT_LISTS))
def test_lists_of_numbers_as_root_stores_them_are_read(tmp_path, small, kind, monkeypatch):
    # Trees written by ROOT from C++ hold std::vector branches, or Double32_t / Float16_t ones
    # packed into fewer bits: each is read as the numbers it stands for.
    tracks = small.tracks.select_events(0, 60)
    path = tmp_path / "root_lists.root"
    expected = write_root_lists(path, tracks, kind, monkeypatch)
    read = read_tracks(path)
    assert_same_batch(read, read_tracks(write_tree(tmp_path / "plain.root", expected,
                                                   tracks.counts)))
    chunks = [chunk.tracks for chunk in iterate_tracks(path, step_size=7)]
    assert len(chunks) == 9
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(
            np.concatenate([getattr(chunk, name) for chunk in chunks]), getattr(read, name))


def test_binary_and_decimal_units_differ_at_one_byte():
    assert parse_step_size("0.00099 KiB") == "0.00099 KiB"  # 1.01 bytes
    with pytest.raises(ValueError):
        parse_step_size("0.00099 kB")  # 0.99 bytes


def test_entry_numbers_of_later_chunks_count_from_their_first_entry(tmp_path):
    path = tmp_path / "t.root"
    write_sample(path, simulate(5, seed=1).tracks)
    chunks = list(iterate_tracks(path, TrackSchema(event_ids=()), step_size=2))
    assert [c.event_ids["event_number"].tolist() for c in chunks] == [[0, 1], [2, 3], [4]]


def test_event_numbers_continue_across_the_batches_of_one_write(tmp_path):
    def empty_events(n):
        return VertexBatch.from_arrays(counts=np.zeros(n, np.int64),
                                       **{name: np.zeros(0) for name in VERTEX_FIELDS})

    with VertexWriter(tmp_path / "v.root") as writer:
        writer.write(empty_events(2))
        writer.write_all([(empty_events(3), None, None), (empty_events(1), None, None)])
    with uproot.open(tmp_path / "v.root") as file:
        numbers = file["vertices"]["event_number"].array(library="np")
    assert numbers.tolist() == [0, 1, 2, 3, 4, 5]


def test_write_sample_refuses_states_the_reader_would_refuse(tmp_path, sample):
    # 1e39 became inf in float32 (a RuntimeWarning only), and a NaN state of wrapped buffers
    # was written as it was: read_tracks then refused the file.
    tracks = sample.tracks.select_events(0, 3)
    fields = {name: np.array(getattr(tracks, name), dtype=np.float64) for name in TRACK_FIELDS}
    fields["z"][4] = 1e39
    too_large = TrackBatch.from_arrays(offsets=tracks.offsets, **fields)
    path = tmp_path / "big.root"
    with pytest.raises(ValueError, match=r"big\.root: tracks: field 'z' is 1e\+39 in event 0 "
                                         r"\(track 4 .*beyond the range of float32 \(write "
                                         r"with precision=numpy\.float64\)"):
        write_sample(path, too_large)
    write_sample(path, too_large, precision=np.float64)  # fits there
    assert read_tracks(path).z[4] == 1e39
    fields["z"][4] = np.nan
    with pytest.raises(ValueError, match=r"tracks: field 'z' is nan in event 0 .*not a number "
                                         r"the reader takes"):
        write_sample(tmp_path / "nan.root", TrackBatch.from_buffers(tracks.offsets, **fields))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.root"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda v, path: write_vertices(path, v, with_weights="no"),
     "with_weights must be True or False, got 'no'"),
    (lambda v, path: VertexWriter(path, with_weights="no"),
     "with_weights must be True or False, got 'no'"),
    (lambda v, path: read_vertices(path, weights="false"),
     "weights must be True or False, got 'false'"),
    (lambda v, path: track_association(v.to_awkward(), v.counts),
     "track_association: vertices must be a VertexBatch"),
])
def test_io_arguments_of_the_wrong_kind_are_named(tmp_path, sample, call, message):
    # "no" was taken as True, and an awkward array for a batch raised awkward's AttributeError.
    vertices = find_vertices(sample.tracks.select_events(0, 5), backend="cpu")
    path = tmp_path / "pvs.root"
    write_vertices(path, vertices)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        call(vertices, path)


def test_a_vertex_batch_with_a_value_the_reader_refuses_leaves_the_file_as_it_was(
        tmp_path, small):
    # The value check ran as the branches were made, after the file took its first batch
    # (and its layout from a refused one): write_all was no longer all or none.
    vertices = find_vertices(small.tracks.select_events(0, 4), backend="cpu")
    chi2 = np.array(vertices.chi2, copy=True)
    chi2[vertices.offsets[1]] = np.nan
    bad = dataclasses.replace(vertices, chi2=chi2)
    with VertexWriter(tmp_path / "pvs.root") as writer:
        with pytest.raises(ValueError, match=r"pvs\.root: vertices: field 'chi2' is nan in "
                                             r"event 1 .*not a number the reader takes"):
            writer.write_all([(vertices, None, None), (bad, None, None)])
        assert writer.n_events == 0
        with pytest.raises(ValueError, match="field 'chi2' is nan"):
            writer.write(bad)
        writer.write(vertices, {"run_number": np.zeros(4, np.int64)})  # its own layout
    assert_same_vertices(read_vertices(tmp_path / "pvs.root"), vertices, weights=False)
