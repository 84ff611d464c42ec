"""ROOT I/O: round trips and errors that name file, tree, branch and event."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from pvfinder import find_vertices
from pvfinder.events import TRACK_FIELDS, VERTEX_FIELDS
from pvfinder.io import read_tracks, read_truth, read_vertices, write_sample, write_vertices


def test_sample_round_trip(tmp_path, sample):
    tracks, truth = sample.tracks.select_events(0, 20), sample.truth.select_events(0, 20, sample.tracks)
    path = tmp_path / "sample.root"
    write_sample(path, tracks, truth, precision=np.float64)
    again = read_tracks(path)
    np.testing.assert_array_equal(again.offsets, tracks.offsets)
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(tracks, name))
    truth_again = read_truth(path)
    np.testing.assert_array_equal(truth_again.track_mc_pv, truth.track_mc_pv)
    np.testing.assert_array_equal(truth_again.vertices.z, truth.vertices.z)


def test_vertices_round_trip(tmp_path, sample):
    vertices = find_vertices(sample.tracks.select_events(0, 20), backend="cpu")
    path = tmp_path / "pvs.root"
    write_vertices(path, vertices)
    again = read_vertices(path)
    np.testing.assert_array_equal(again.offsets, vertices.offsets)
    for name in VERTEX_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(vertices, name))
    np.testing.assert_array_equal(again.weights, vertices.weights)
    np.testing.assert_array_equal(again.weight_offsets, vertices.weight_offsets)


def test_file_without_truth(tmp_path, sample):
    path = tmp_path / "tracks.root"
    write_sample(path, sample.tracks.select_events(0, 3))
    assert read_truth(path) is None


def test_missing_file_and_not_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.root: no such file"):
        read_tracks(tmp_path / "nope.root")
    text = tmp_path / "text.root"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.root: not a readable ROOT file"):
        read_tracks(text)


def test_missing_tree_and_branch(tmp_path):
    path = tmp_path / "partial.root"
    counts = [2, 1]
    with uproot.recreate(path) as file:
        file["other"] = {"a": np.arange(3)}
        file.mktree("tracks", {name: "var * float64" for name in ("x", "y")},
                    counter_name=lambda _: "n_tracks")
        file["tracks"].extend({name: ak.unflatten(np.ones(3), counts) for name in ("x", "y")})
    with pytest.raises(ValueError, match="no tree 'velo'.*other, tracks"):
        read_tracks(path, tree="velo")
    with pytest.raises(ValueError, match="partial.root:tracks: missing branch.*z, tx"):
        read_tracks(path)


def test_nan_state_names_event(tmp_path, sample):
    tracks = sample.tracks.select_events(0, 3)
    fields = {name: ak.unflatten(getattr(tracks, name).copy(), tracks.counts) for name in TRACK_FIELDS}
    bad_x = tracks.x.copy()
    bad_x[tracks.offsets[2]] = np.nan
    fields["x"] = ak.unflatten(bad_x, tracks.counts)
    path = tmp_path / "nan.root"
    with uproot.recreate(path) as file:
        file.mktree("tracks", {k: v.type for k, v in fields.items()}, counter_name=lambda _: "n")
        file["tracks"].extend(fields)
    with pytest.raises(ValueError, match="nan.root:tracks: tracks: field 'x' is nan in event 2"):
        read_tracks(path)
