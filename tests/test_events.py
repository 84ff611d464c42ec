"""The event model: construction, awkward round trips and every validation error."""

from __future__ import annotations

import dataclasses

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvfinder.events import (
    TRACK_FIELDS,
    VERTEX_FIELDS,
    MCTruth,
    MCVertices,
    TrackBatch,
    VertexBatch,
    offsets_from_counts,
)


def track_fields(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    fields = {name: rng.normal(size=n) for name in TRACK_FIELDS}
    for name in ("cov_xx", "cov_yy", "cov_txtx", "cov_tyty"):
        fields[name] = rng.uniform(1e-4, 1e-2, size=n)
    return fields


def vertex_fields(n: int) -> dict[str, np.ndarray]:
    return {name: np.arange(n, dtype=float) + 1 for name in VERTEX_FIELDS}


class _SeriesLike:
    """What pandas' Series has of an array: the array protocol, and a dict's get(key)."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __len__(self):
        return len(self.values)

    def get(self, key, default=None):
        return default


def test_offsets_and_weights_with_a_get_method_are_host_arrays():
    # Taken for CuPy arrays and .get()-ed: "get() missing 1 required positional argument".
    tracks = TrackBatch.from_arrays(offsets=_SeriesLike([0, 2, 3]), **track_fields(3))
    assert tracks.counts.tolist() == [2, 1]
    vertices = VertexBatch.from_arrays(counts=[1], weights=_SeriesLike([0.5, 1.0]),
                                       weight_counts=[2], **vertex_fields(1))
    assert vertices.weights.tolist() == [0.5, 1.0]


def test_from_arrays_counts_and_offsets_agree():
    fields = track_fields(6)
    by_counts = TrackBatch.from_arrays(counts=[2, 0, 4], **fields)
    by_offsets = TrackBatch.from_arrays(offsets=[0, 2, 2, 6], **fields)
    assert by_counts.n_events == 3 and by_counts.n_tracks == 6
    np.testing.assert_array_equal(by_counts.offsets, by_offsets.offsets)
    np.testing.assert_array_equal(by_counts.counts, [2, 0, 4])


def test_buffers_name_what_their_offsets_are_when_not_an_array():
    # A list of offsets was said to be "not a non-empty 1-d array", which it looks like.
    fields = track_fields(3)
    with pytest.raises(ValueError, match=r"offsets must be a non-empty 1-d array \(numpy or "
                                         r"CuPy\), got list"):
        TrackBatch.from_buffers([0, 3], **fields)
    with pytest.raises(ValueError, match="got 2-d of 2"):
        TrackBatch.from_buffers(np.array([[0, 3]]), **fields)


def test_float32_is_kept_and_mixed_precision_promoted():
    fields = {k: v.astype(np.float32) for k, v in track_fields(3).items()}
    assert TrackBatch.from_arrays(counts=[3], **fields).x.dtype == np.float32
    fields["x"] = fields["x"].astype(np.float64)
    assert TrackBatch.from_arrays(counts=[3], **fields).y.dtype == np.float64


def test_track_awkward_round_trip():
    tracks = TrackBatch.from_arrays(counts=[1, 0, 3], **track_fields(4))
    array = tracks.to_awkward()
    assert ak.num(array, axis=1).tolist() == [1, 0, 3]
    again = TrackBatch.from_awkward(array)
    for name in TRACK_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(tracks, name))


def test_select_events_views():
    tracks = TrackBatch.from_arrays(counts=[1, 2, 3], **track_fields(6))
    middle = tracks.select_events(1, 3)
    assert middle.counts.tolist() == [2, 3]
    np.testing.assert_array_equal(middle.x, tracks.x[1:])


@pytest.mark.parametrize(("start", "stop"), [(2, 1), (-1, 3), (0, 5), (0.5, 2), (0, 2.0)])
def test_select_events_outside_the_batch_is_an_error(start, stop):
    tracks = TrackBatch.from_arrays(counts=[1, 2, 3], **track_fields(6))
    # Were: a batch of -1 events, an empty batch (not the last event) and an IndexError (also
    # for bounds that are not integers).
    with pytest.raises(ValueError, match=f"tracks: events {start}:{stop} are not a range of "
                                         "the 3 events"):
        tracks.select_events(start, stop)


def test_select_events_takes_numpy_integers():
    tracks = TrackBatch.from_arrays(counts=[1, 2, 3], **track_fields(6))
    assert tracks.select_events(np.array(1), np.uint64(3)).n_events == 2


def test_vertex_awkward_round_trip_with_weights():
    vertices = VertexBatch.from_arrays(
        counts=[2, 0], weights=np.arange(6.0) / 8, weight_counts=[3, 3], **vertex_fields(2)
    )
    array = vertices.to_awkward()
    assert array[0, 1, "weights"].tolist() == [0.375, 0.5, 0.625]
    again = VertexBatch.from_awkward(array)
    np.testing.assert_array_equal(again.weights, vertices.weights)
    np.testing.assert_array_equal(again.weight_offsets, [0, 3, 6])


@pytest.mark.parametrize("cls", [TrackBatch, VertexBatch, MCVertices])
@pytest.mark.parametrize("text", ["[[], []]", "[]"])
def test_events_that_never_held_a_record_are_empty_events(cls, text):
    # A JSON round trip of events without vertices lost the record type: "lacks field(s)".
    batch = cls.from_awkward(ak.from_json(text))
    assert batch.n_events == len(ak.from_json(text)) and batch.counts.sum() == 0


def test_a_numeric_2d_array_is_not_events_of_records():
    with pytest.raises(ValueError, match="lacks field"):  # not "has no attribute 'content'"
        TrackBatch.from_awkward(ak.Array(np.zeros((2, 3))))


def test_a_missing_weight_is_named_as_such():
    # A None among the weights became NaN, passed on; a None list made offsets of -28.
    vertices = VertexBatch.from_arrays(counts=[1, 2], weights=[1.0, 0.5, 0.5, 0.25, 0.75],
                                       weight_counts=[1, 2, 2], **vertex_fields(3)).to_awkward()
    weights = vertices["weights"]
    with pytest.raises(ValueError, match="a weight of vertex 1 in event 1 is None"):
        VertexBatch.from_awkward(ak.with_field(vertices, ak.mask(weights, weights != 0.25),
                                               "weights"))
    no_list = ak.mask(weights, ak.local_index(weights, axis=1) != 1)
    with pytest.raises(ValueError, match="the weights of vertex 1 in event 1 are None, not a"):
        VertexBatch.from_awkward(ak.with_field(vertices, no_list, "weights"))


def test_vertex_concatenate():
    a = VertexBatch.from_arrays(counts=[1], weights=[0.5, 1.0], weight_counts=[2], **vertex_fields(1))
    b = VertexBatch.from_arrays(counts=[0, 2], weights=[1.0, 0.0, 0.0, 1.0], weight_counts=[2, 2],
                                **vertex_fields(2))
    joined = VertexBatch.concatenate([a, b])
    assert joined.counts.tolist() == [1, 0, 2]
    assert joined.weight_offsets.tolist() == [0, 2, 4, 6]
    assert joined.z.tolist() == [1.0, 1.0, 2.0]
    without = VertexBatch.from_arrays(counts=[1], **vertex_fields(1))
    for mixed in ([a, without], [without, a]):  # dropped a's weights, or failed in numpy
        with pytest.raises(ValueError, match="batches with weights and batches without"):
            VertexBatch.concatenate(mixed)
    # Any iterable; one batch is copied like several (a finder's out= view is overwritten
    # by its next call: the joined result must not be that view).
    assert VertexBatch.concatenate(batch for batch in (a, b)).counts.tolist() == [1, 0, 2]
    # Unsigned offsets (a caller's own, through the constructor) joined as int64, not floats.
    unsigned = dataclasses.replace(b, offsets=b.offsets.astype(np.uint64),
                                   weight_offsets=b.weight_offsets.astype(np.uint64))
    joined = VertexBatch.concatenate([a, unsigned])
    assert joined.offsets.dtype == np.int64 and joined.weight_offsets.dtype == np.int64
    assert joined.to_awkward().tolist() == VertexBatch.concatenate([a, b]).to_awkward().tolist()
    alone = VertexBatch.concatenate([a])
    assert alone is not a and not np.shares_memory(alone.z, a.z)
    assert not np.shares_memory(alone.weights, a.weights)


def test_vertex_events_are_selected_with_their_weights():
    # VertexBatch(**batch.event_slice(...)) dropped the weights without a word.
    batch = VertexBatch.from_arrays(counts=[1, 0, 2], weights=[0.5, 1.0, 1.0, 0.0, 0.0, 1.0],
                                    weight_counts=[2, 2, 2], **vertex_fields(3))
    tail = batch.select_events(1, 3)
    assert tail.counts.tolist() == [0, 2] and tail.z.tolist() == [2.0, 3.0]
    assert tail.weights.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert tail.weight_offsets.tolist() == [0, 2, 4]
    assert np.shares_memory(tail.weights, batch.weights)  # views, as TrackBatch's
    rejoined = VertexBatch.concatenate([batch.select_events(0, 1), tail])
    assert rejoined.weights.tolist() == batch.weights.tolist()
    assert batch.select_events(2, 2).n_events == 0
    unweighted = VertexBatch.from_arrays(counts=[1, 0, 2], **vertex_fields(3))
    assert unweighted.select_events(0, 2).weights is None


def test_truth_checks_labels():
    pvs = MCVertices.from_arrays(counts=[2], x=[0.0, 0.0], y=[0.0, 0.0], z=[1.0, 2.0],
                                 n_reconstructible=[5, 6])
    tracks = TrackBatch.from_arrays(counts=[3], **track_fields(3))
    MCTruth(pvs, np.array([0, 1, -1])).check_matches(tracks)
    with pytest.raises(ValueError, match="MC PV 2, which does not exist"):
        MCTruth(pvs, np.array([0, 2, -1])).check_matches(tracks)
    with pytest.raises(ValueError, match="labels 2 tracks"):
        MCTruth(pvs, np.array([0, 1])).check_matches(tracks)
    # Offsets of wrapped buffers, not scanned: numpy's "repeats may not contain negative
    # values" from validate(); unsigned ones were refused by np.repeat.
    two = MCVertices.from_arrays(counts=[1, 1], x=[0.0, 0.0], y=[0.0, 0.0], z=[1.0, 2.0],
                                 n_reconstructible=[5, 6])
    fields = {name: np.asarray(values) for name, values in track_fields(3).items()}
    backwards = TrackBatch.from_buffers(np.array([0, 3, 1, 3]), **fields)
    three = MCVertices.from_arrays(counts=[1, 1, 1], x=[0.0] * 3, y=[0.0] * 3,
                                   z=[1.0, 2.0, 3.0], n_reconstructible=[5, 6, 7])
    with pytest.raises(ValueError, match="tracks offsets decrease at event 1$"):
        MCTruth(three, np.array([0, 0, 0])).check_matches(backwards)
    MCTruth(two, np.array([0, 0, -1])).check_matches(
        TrackBatch.from_buffers(np.array([0, 2, 3], dtype=np.uint64), **fields))
    # Accepted before: labels of 0.5 (truncated when written), any object as the vertices,
    # and counts of reconstructible tracks below 0 (every PV then not reconstructible).
    with pytest.raises(ValueError, match="track_mc_pv must be integers, got float64"):
        MCTruth(pvs, np.array([0.5, 1.0, -1.0]))
    assert len(MCTruth(pvs, []).track_mc_pv) == 0  # no tracks: numpy calls [] floats
    with pytest.raises(TypeError, match="vertices must be MCVertices, got TrackBatch"):
        MCTruth(tracks, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match="'n_reconstructible' is negative \\(-5\\) in event 0"):
        MCVertices.from_arrays(counts=[2], x=[0.0, 0.0], y=[0.0, 0.0], z=[1.0, 2.0],
                               n_reconstructible=[5, -5])
    # Built without from_arrays: validate() matched nothing to a NaN PV (its vertex counted
    # as a fake), and write_sample wrote a file that read_truth refuses.
    unchecked = MCVertices(offsets=np.array([0, 2]), x=np.zeros(2), y=np.zeros(2),
                           z=np.array([1.0, np.nan]), n_reconstructible=np.array([5, 6]))
    with pytest.raises(ValueError, match="MC vertices: field 'z' is nan in event 0"):
        MCTruth(unchecked, np.array([0, 1, -1]))
    # select_events cut the labels at the offsets of whatever tracks it was given.
    truth = MCTruth(two, np.array([0, 0, -1]))
    two_events = TrackBatch.from_arrays(counts=[2, 1], **track_fields(3))
    assert truth.select_events(1, 2, two_events).track_mc_pv.tolist() == [-1]
    with pytest.raises(ValueError, match="not the batch it describes"):
        truth.select_events(0, 1, TrackBatch.from_arrays(counts=[1, 1], **track_fields(2)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("cov_yty"), "missing field"),
        (lambda f: f.update(bogus=np.zeros(4)), "unknown field"),
        (lambda f: f.update(x=np.zeros((2, 2))), "one-dimensional"),
        (lambda f: f.update(x=np.zeros(5)), "has 5 entries but the counts add up to 4"),
        (lambda f: f.update(x=np.array(["a", "b", "c", "d"])), "must hold real numbers"),
        # Complex states lost their imaginary part; booleans were 0 and 1 mm.
        (lambda f: f.update(x=np.zeros(4) + 1j), "'x' must hold real numbers, got complex"),
        (lambda f: f.update(tx=np.ones(4, bool)), "'tx' must hold real numbers, got bool"),
        (lambda f: f.update(z=np.array([0.0, 0.0, np.nan, 0.0])), "'z' is nan in event 1"),
        (lambda f: f.update(tx=np.array([0.0, np.inf, 0.0, 0.0])), "'tx' is inf in event 1"),
        (lambda f: f.update(cov_xx=np.array([1e-3, 1e-3, 1e-3, -1.0])), "negative .* event 2"),
        # The first bad value is named, whichever kind; a non-finite one before a negative one.
        (lambda f: f.update(y=np.array([0.0, -np.inf, np.nan, np.inf], np.float32)),
         "'y' is -inf in event 1 \\(track 0 of the event, 1 of the flat arrays\\)"),
        (lambda f: f.update(cov_yy=np.array([-1.0, 1e-3, np.nan, 1e-3])),
         "'cov_yy' is nan in event 1 \\(track 1 of the event, 2 of the flat arrays\\)"),
    ],
)
def test_track_validation_errors(change, message):
    fields = track_fields(4)
    change(fields)
    with pytest.raises(ValueError, match=message):
        TrackBatch.from_arrays(counts=[1, 2, 1], **fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [1, 2, 1], "offsets": [0, 1, 3, 4]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"counts": [1, -1, 4]}, "event 1 is negative"),
        ({"counts": [2**62, 2**62, 2**62]}, "more than 64-bit offsets can hold"),  # wrapped
        ({"counts": [1.5, 2.5]}, "must be integers"),
        ({"offsets": [1, 2, 4]}, "start at 0"),
        ({"offsets": [0, 3, 1, 4]}, "decrease at event 1"),
        ({"offsets": [0, 2, 1, 4]}, "decrease at event 1"),  # by one: a count of -1
        # Unsigned differences wrap around: counts of 3, -2 and 3 were accepted.
        ({"offsets": np.array([0, 3, 1, 4], np.uint64)}, "decrease at event 1"),
        ({"offsets": [0, 1, 3]}, "'x' has 4 entries but the counts add up to 3"),
        ({"offsets": [0.0, 4.0]}, "must be integers"),
    ],
)
def test_offset_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrackBatch.from_arrays(**kwargs, **track_fields(4))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update(z=f["z"][:3]), r"'z' must have shape \(4,\) to match offsets\[-1\]"),
        (lambda f: f.update(x=np.zeros(5)), r"'x' must have shape \(4,\)"),
        (lambda f: f.update(tx=f["tx"].astype(str)), "'tx' must hold floats"),
        (lambda f: f.update(offsets=np.array([0.0, 1.0, 3.0, 4.0])), "must be integers"),
        (lambda f: f.update(offsets=np.array([1, 3, 4])), "must start at 0"),
    ],
)
def test_the_constructor_checks_the_structure(change, message):
    # TrackBatch(...) itself was never checked: the finder read past the end of a short
    # field and returned vertices made of whatever memory followed.
    fields = {"offsets": np.array([0, 1, 3, 4]), **track_fields(4)}
    change(fields)
    with pytest.raises(ValueError, match=message):
        TrackBatch(**fields)


def test_truth_and_vertex_validation_errors():
    with pytest.raises(ValueError, match="'n_reconstructible' must be integers"):
        MCVertices.from_arrays(counts=[1], x=[0.0], y=[0.0], z=[0.0], n_reconstructible=[1.5])
    with pytest.raises(ValueError, match="weights= and weight_counts= together"):
        VertexBatch.from_arrays(counts=[1], weights=[1.0], **vertex_fields(1))
    with pytest.raises(ValueError, match="one entry per vertex"):
        VertexBatch.from_arrays(counts=[1], weights=[1.0], weight_counts=[1, 0], **vertex_fields(1))
    with pytest.raises(ValueError, match="offsets end at 2"):
        VertexBatch.from_arrays(counts=[1], weights=[1.0], weight_counts=[2], **vertex_fields(1))
    # NaN weights (an awkward None among them, after to_numpy) and others passed as they were.
    for weight, shown in ((np.nan, "nan"), (-0.5, "-0.5"), (1.5, "1.5")):
        with pytest.raises(ValueError, match=f"weight {shown} of vertex 1 in event 1 is not in"):
            VertexBatch.from_arrays(counts=[1, 2], weights=[0.0, 0.5, 0.5, weight, 1.0],
                                    weight_counts=[1, 2, 2], **vertex_fields(3))
    with pytest.raises(ValueError, match="vertex 1 of event 0 has 1 weights and vertex 0 2"):
        VertexBatch.from_arrays(counts=[2], weights=[0.5, 0.5, 1.0], weight_counts=[2, 1],
                                **vertex_fields(2))
    with pytest.raises(ValueError, match="weights must be one flat array of real numbers"):
        VertexBatch.from_arrays(counts=[1], weights=["a"], weight_counts=[1], **vertex_fields(1))
    with pytest.raises(ValueError, match="MC truth: track_mc_pv must be one-dimensional"):
        MCTruth(MCVertices.from_arrays(counts=[0], x=[], y=[], z=[], n_reconstructible=np.array([], int)),
                np.zeros((1, 1)))


def test_awkward_input_errors():
    with pytest.raises(ValueError, match="lacks field"):
        TrackBatch.from_awkward(ak.Array([[{"x": 1.0}]]))
    with pytest.raises(ValueError, match="one list of records per event"):
        TrackBatch.from_awkward(ak.Array([{"x": 1.0}]))



def test_awkward_event_that_is_none_is_named():
    # An option type's None event has no count of its own: it must not give garbage offsets.
    events = TrackBatch.from_arrays(counts=[2, 1, 3], **track_fields(6)).to_awkward().tolist()
    with pytest.raises(ValueError, match="event 1 is None"):
        TrackBatch.from_awkward(ak.Array([events[0], None, events[2]]))
    # Option-typed events without a None convert as the plain ones.
    optional = ak.Array([*events, None])[:3]
    assert optional.type.content.__class__.__name__ == "OptionType"
    assert TrackBatch.from_awkward(optional).counts.tolist() == [2, 1, 3]
    # Also events that never held a record: they lacked every field, and a None among them
    # was said to as well.
    empty = ak.mask(ak.Array([[], []]), [True, True])
    assert TrackBatch.from_awkward(empty).counts.tolist() == [0, 0]
    with pytest.raises(ValueError, match="event 1 is None"):
        TrackBatch.from_awkward(ak.Array([[], None]))

def test_empty_batch():
    tracks = TrackBatch.from_arrays(counts=np.array([], dtype=np.int64),
                                    **{k: np.array([]) for k in TRACK_FIELDS})
    assert tracks.n_events == 0 and tracks.n_tracks == 0
    assert len(tracks.to_awkward()) == 0
    assert offsets_from_counts([]).tolist() == [0]
    for not_counts in ([True, False], ["2", "1"]):  # a mask, or text, is no count
        with pytest.raises(ValueError, match="counts must be integers, got"):
            offsets_from_counts(not_counts)
    assert offsets_from_counts([2.0, 1.0]).tolist() == [0, 2, 3]  # whole floats are counts


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(min_value=0, max_value=6), max_size=12))
def test_awkward_round_trip_any_counts(counts):
    n = sum(counts)
    tracks = TrackBatch.from_arrays(counts=counts, **track_fields(n, seed=n))
    again = TrackBatch.from_awkward(tracks.to_awkward())
    assert again.counts.tolist() == counts
    np.testing.assert_array_equal(again.cov_tyty, tracks.cov_tyty)


def test_reprs_summarise_instead_of_printing_every_array():
    """In a notebook, a 50-event result printed 65 000 characters of arrays."""
    from pvfinder import find_vertices
    from pvfinder.simulation import simulate

    sample = simulate(50, seed=1)
    n_tracks, n_mc = int(sample.tracks.counts.sum()), int(sample.truth.vertices.counts.sum())
    vertices = find_vertices(sample.tracks, backend="cpu")
    n_vertices = int(vertices.counts.sum())
    assert repr(vertices) == f"VertexBatch(50 events, {n_vertices} vertices, with weights)"
    assert repr(find_vertices(sample.tracks, backend="cpu", weights=False)) == (
        f"VertexBatch(50 events, {n_vertices} vertices)")
    assert repr(sample.tracks) == f"TrackBatch(50 events, {n_tracks} tracks, float64 states)"
    assert repr(sample.truth) == f"MCTruth(50 events, {n_mc} MC vertices, {n_tracks} tracks)"
    assert repr(sample) == (f"SimulatedSample(50 events at nu = 7.6, {n_tracks} tracks, "
                            f"{n_mc} MC vertices, run_number={sample.run_number})")
    assert len(sample) == len(sample.truth) == len(vertices) == 50


def test_a_missing_value_is_named_as_such_not_as_nan():
    """ak.pad_none leaves None in the lists; it was reported as a NaN the input did not hold."""
    from pvfinder.events import TRACK_FIELDS

    per_event = [{name: [0.1, 0.2] for name in TRACK_FIELDS}, {name: [0.3] for name in TRACK_FIELDS}]
    array = ak.Array([[dict(zip(e, values)) for values in zip(*e.values())] for e in per_event])
    array = ak.pad_none(array, 2, axis=1)
    # "entry" meant the flat index in one message and the place in the event in another.
    with pytest.raises(ValueError, match=r"field 'x' is None \(a missing value\) in event 1 "
                                         r"\(track 1 of the event, 3 of the flat arrays\)"):
        TrackBatch.from_awkward(array)


def test_batches_slice_by_events_like_select_events():
    tracks = TrackBatch.from_arrays(counts=[1, 2, 3, 0], **track_fields(6))
    for key, (start, stop) in [(slice(1, 3), (1, 3)), (slice(None, 2), (0, 2)),
                               (slice(-2, None), (2, 4)), (slice(3, 1), (3, 3)),
                               (slice(0, 99), (0, 4))]:
        got, want = tracks[key], tracks.select_events(start, stop)
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_array_equal(got.x, want.x)
    with pytest.raises(TypeError, match=r"indexed by a slice of events \(batch\[i:i \+ 1\]"):
        tracks[0]
    with pytest.raises(TypeError, match="indexed by a slice"):
        list(tracks)  # iteration would take one event at a time: refused the same way
    with pytest.raises(ValueError, match="takes no step"):
        tracks[::2]


def test_masked_entries_are_refused_and_a_mask_of_none_is_taken_as_it_is():
    # np.asarray dropped the mask: the value under it was used as a track state.
    fields = track_fields(3)
    masked = np.ma.masked_array([0.1, 999.0, 0.1], mask=[False, True, False])
    with pytest.raises(ValueError, match=r"field 'x' is masked.*track 1"):
        TrackBatch.from_arrays(counts=[3], **{**fields, "x": masked})
    for wrapped in (masked, np.ma.masked_array([0.1, 0.2, 0.1])):  # a mask, and nomask
        with pytest.raises(ValueError, match=r"field 'x' is a masked array.*filled"):
            TrackBatch.from_buffers(np.array([0, 3]), **{**fields, "x": wrapped})
    unmasked = np.ma.masked_array([0.1, 0.2, 0.1], mask=False)
    batch = TrackBatch.from_arrays(counts=[3], **{**fields, "x": unmasked})
    assert not isinstance(batch.x, np.ma.MaskedArray)
    np.testing.assert_array_equal(batch.x, [0.1, 0.2, 0.1])


def test_a_field_of_other_than_numbers_from_awkward_is_named():
    # awkward's "irreducible unions" TypeError named neither the field nor the input.
    records = [[{**{name: 0.1 for name in TRACK_FIELDS}, "x": "a"},
                {name: 0.1 for name in TRACK_FIELDS}]]
    with pytest.raises(ValueError, match=r"tracks: field 'x' must hold numbers"):
        TrackBatch.from_awkward(ak.Array(records))


def test_to_awkward_refuses_a_structure_the_constructor_did_not_check():
    # The constructors of vertices check nothing (they are built on every call), and
    # from_buffers scans no offsets: to_awkward built lists that cut the fields wrongly.
    short = VertexBatch(offsets=np.array([0, 2]), **vertex_fields(1))
    with pytest.raises(ValueError, match=r"vertices offsets end at 2 but the fields hold 1"):
        short.to_awkward()
    backwards = TrackBatch.from_buffers(np.array([0, 5, 2, 6]), **track_fields(6))
    with pytest.raises(ValueError, match=r"tracks offsets decrease at event 1"):
        backwards.to_awkward()


@pytest.mark.parametrize(("cls", "extra"), [(TrackBatch, ()), (MCVertices, ()),
                                             (VertexBatch, ("weights", "weight_offsets"))])
def test_each_container_holds_exactly_its_fields(cls, extra):
    # The dataclass fields are written out beside TRACK_FIELDS / VERTEX_FIELDS, which the
    # readers, writers and kernels go by.
    assert tuple(field.name for field in dataclasses.fields(cls)) == (
        "offsets", *cls.FIELDS, *extra)
