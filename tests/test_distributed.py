"""Many files: planning outputs, the batch job in one process, and the same job on Dask."""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import http.server
import io
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import types
import warnings
import zipfile
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from pvfinder import distributed, find_vertices
from pvfinder import io as pvfinder_io
from pvfinder.backends import BackendUnavailableError
from pvfinder.config import PVFinderConfig
from pvfinder.distributed import (
    dask_client,
    expand_inputs,
    plan_outputs,
    reconstruct_files,
    vertex_collection,
)
from pvfinder.events import TRACK_FIELDS, VertexBatch
from pvfinder.io import (
    TrackSchema,
    TrackSource,
    inspect_tracks,
    read_tracks,
    read_vertices,
    recorded_inputs,
    write_sample,
    write_vertices,
)
from pvfinder.pipeline import PVFinder, SeedOverflowWarning

from .conftest import CUDA_REASON
from .test_io import assert_same_vertices, write_root_lists, write_tree


def _third_basket_of_x(path) -> int:
    """Where in ``path`` the third basket of the tracks' branch x starts (its key)."""
    with uproot.open(path) as file:
        return int(file["tracks"]["x"].member("fBasketSeek")[2])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Four small samples (40–70 events each), one with a NaN state in entry 13, one whose
    basket of x for entries 80–119 is damaged (its compressed bytes scrambled), one without
    entries (with run and event numbers) and one whose basket for entries 80–119 names no
    codec."""
    from pvfinder.simulation import simulate

    folder = tmp_path_factory.mktemp("many")
    paths = []
    for i, n_events in enumerate((60, 40, 70, 50)):
        sample = simulate(n_events, seed=20 + i)
        paths.append(folder / f"run{i}.root")
        write_sample(paths[-1], sample.tracks, sample.truth)
    tracks = simulate(30, seed=30).tracks
    states = {name: np.array(getattr(tracks, name), dtype=np.float32) for name in TRACK_FIELDS}
    states["x"][tracks.offsets[13]] = np.nan  # write_sample refuses it, as the reader does
    paths.append(write_tree(folder / "nan.root", states, tracks.counts,
                            flat={"event_number": np.arange(30, dtype=np.int64)}))
    paths.append(folder / "damaged.root")
    write_sample(paths[-1], simulate(120, seed=31).tracks, events_per_basket=40)
    third_basket = _third_basket_of_x(paths[-1])
    data = bytearray(paths[-1].read_bytes())
    for i in range(third_basket + 80, third_basket + 400):  # past the key, into the frame
        data[i] ^= 0x5A
    paths[-1].write_bytes(bytes(data))
    no_tracks = {name: np.zeros(0, np.float32) for name in TRACK_FIELDS}
    ids = {"run_number": np.zeros(0, np.int32), "event_number": np.zeros(0, np.int64)}
    paths.append(write_tree(folder / "empty.root", no_tracks, np.zeros(0, np.int64), flat=ids))
    # A basket whose compression header names no codec: uproot raises a plain ValueError.
    paths.append(folder / "badheader.root")
    write_sample(paths[-1], simulate(120, seed=32).tracks, events_per_basket=40)
    third_basket = _third_basket_of_x(paths[-1])
    data = bytearray(paths[-1].read_bytes())
    key_length = int.from_bytes(data[third_basket + 14 : third_basket + 16], "big")
    data[third_basket + key_length : third_basket + key_length + 2] = b"XX"
    paths[-1].write_bytes(bytes(data))
    return paths


def expected_vertices(path) -> VertexBatch:
    return find_vertices(read_tracks(path), backend="cpu")


def test_expand_inputs_and_plan_outputs(tmp_path, files):
    pattern = str(files[0].parent / "run*.root")
    found, errors = expand_inputs([pattern, str(files[1]), "missing.root", "none/*.root"])
    assert found == [*files[:4], Path("missing.root")]  # in order, each once
    assert errors == ["none/*.root: no file matches"]
    # Path("") is the current directory: reading it said ".: a directory, not a ROOT file".
    assert expand_inputs(["", str(files[0])]) == ([files[0]], ["'' names no file"])
    assert plan_outputs(files[:1], tmp_path / "one.root") == {tmp_path / "one.root": files[:1]}
    assert plan_outputs(files[:2], tmp_path / "all.root", merge=True) == {
        tmp_path / "all.root": files[:2]}
    assert plan_outputs(files[:2], tmp_path / "out") == {
        tmp_path / "out" / "run0_pvs.root": [files[0]],
        tmp_path / "out" / "run1_pvs.root": [files[1]]}
    with pytest.raises(ValueError, match="would both write .*run0_pvs.root"):
        plan_outputs([files[0], tmp_path / "run0.root"], tmp_path / "out")
    # Inputs named by text, as a user lists them (an AttributeError on str.stem before).
    assert plan_outputs([str(path) for path in files[:2]], str(tmp_path / "out")) == {
        tmp_path / "out" / "run0_pvs.root": [files[0]],
        tmp_path / "out" / "run1_pvs.root": [files[1]]}
    # A trailing slash means a directory; the suffix is .root in any case.
    assert plan_outputs(files[:2], f"{tmp_path / 'pvs.root'}/") == {
        tmp_path / "pvs.root" / "run0_pvs.root": [files[0]],
        tmp_path / "pvs.root" / "run1_pvs.root": [files[1]]}
    assert plan_outputs(files[:1], f"{tmp_path / 'pvs.root'}/") == {
        tmp_path / "pvs.root" / "run0_pvs.root": [files[0]]}
    assert plan_outputs(files[:1], tmp_path / "ONE.ROOT") == {tmp_path / "ONE.ROOT": files[:1]}
    with pytest.raises(ValueError, match="give a directory, or --merge"):
        plan_outputs(files[:2], tmp_path / "ALL.ROOT")
    with pytest.raises(ValueError, match="--merge writes one file, and this names a directory"):
        plan_outputs(files[:2], f"{tmp_path / 'merged'}/", merge=True)
    # An existing file without .root is neither a vertex file to name nor a directory.
    (tmp_path / "notes").write_text("kept")
    for merge in (False, True):  # merged, it was replaced
        with pytest.raises(ValueError, match="notes: an existing file not named"):
            plan_outputs(files[:1], tmp_path / "notes", merge=merge)
    assert (tmp_path / "notes").read_text() == "kept"
    if Path("/dev/null").exists():  # named as what it is, not "an existing file"
        with pytest.raises(ValueError, match="/dev/null: a character device not named"):
            plan_outputs(files[:1], "/dev/null")
    assert plan_outputs(files[:2], tmp_path / "new", merge=True) == {tmp_path / "new": files[:2]}
    (tmp_path / "pvs.root").write_text("not a vertex file")
    with pytest.raises(ValueError, match="pvs.root: a file, not a directory"):
        plan_outputs(files[:1], f"{tmp_path / 'pvs.root'}/")


def test_a_plan_written_by_hand_with_strings_works(tmp_path, files):
    # {"out.root": "in.root"} read the letters of "in.root" as inputs, and str outputs failed
    # on output.exists() with --skip-existing.
    output = str(tmp_path / "out.root")
    for _ in range(2):  # the second time, skipped as done
        (result,) = reconstruct_files({output: str(files[0])}, backend="cpu",
                                      skip_existing=True)
    assert result.status == "skipped" and result.input == files[0]
    with pytest.raises(TypeError, match="plan must map each output to its inputs"):
        reconstruct_files([(output, [files[0]])], backend="cpu")


def test_an_existing_file_that_holds_no_vertices_is_not_replaced(tmp_path, files):
    # A sample of tracks named as the output was replaced without a word (as was junk).
    kept = tmp_path / "sample.root"
    kept.write_bytes(files[1].read_bytes())
    (result,) = reconstruct_files({kept: [files[0]]}, backend="cpu")
    assert result.status == "failed"
    assert "no tree 'vertices'" in result.error and "not a vertex file" in result.error
    assert kept.read_bytes() == files[1].read_bytes()
    output = tmp_path / "pvs.root"  # a vertex file is replaced: a rerun
    for _ in range(2):
        (result,) = reconstruct_files({output: [files[0]]}, backend="cpu")
        assert result.status == "done"


def test_a_vertex_file_of_an_earlier_version_is_replaced(tmp_path, files):
    # Its note of inputs was lines of text, not JSON: it was taken for "not a vertex file".
    output = tmp_path / "pvs.root"
    reconstruct_files({output: [files[0]]}, backend="cpu")
    with uproot.update(output) as file:
        file["pvfinder_inputs"] = f"{files[0]}\n{files[1]}"
    (result,) = reconstruct_files({output: [files[0]]}, backend="cpu")
    assert result.status == "done"


def test_a_resumed_job_with_nothing_left_starts_no_finder(tmp_path, files, monkeypatch):
    # It started the finder, or a whole Dask cluster, to report every input skipped.
    plan = plan_outputs(files[:2], tmp_path)
    reconstruct_files(plan, backend="cpu")

    def no_engine(*_args, **_kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(distributed, "_engine", no_engine)
    results = reconstruct_files(plan, backend="cpu", skip_existing=True, scheduler="local:2")
    assert [result.status for result in results] == ["skipped", "skipped"]


def test_workers_in_another_directory_read_a_relative_input_as_named_here(tmp_path, files,
                                                                          monkeypatch):
    """A scheduler's workers run in their own directory: a relative input was read there,
    another file of that name giving other vertices without a word."""
    pytest.importorskip("distributed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(files[1], elsewhere / files[0].name)  # same name, other events
    monkeypatch.chdir(files[0].parent)
    output = tmp_path / "out.root"
    with dask_client("local:1") as client:
        client.run(os.chdir, str(elsewhere))
        results = reconstruct_files({output: [Path(files[0].name)]}, backend="cpu",
                                    scheduler=client.scheduler.address)
    assert [result.status for result in results] == ["done"]
    assert_same_vertices(read_vertices(output), expected_vertices(files[0]), weights=False)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"backend": "bogus"}, ValueError, "unknown backend 'bogus'"),
    ({"compression": "bogus"}, ValueError, "unknown compression 'bogus'"),
    pytest.param({"backend": "cuda"}, BackendUnavailableError, "cupy",
                 marks=pytest.mark.skipif(CUDA_REASON is None, reason="a GPU is usable here")),
])
def test_a_dask_job_refuses_its_options_before_the_cluster_starts(tmp_path, files, monkeypatch,
                                                                   options, error, message):
    """Each partition of each input failed, after the cluster had started, as unreadable:
    "run0.root:tracks: cannot read the entries from 0 on (ValueError: unknown backend ...)"."""
    def no_cluster(scheduler):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(distributed, "dask_client", no_cluster)
    plan = plan_outputs(files[:2], tmp_path)
    with pytest.raises(error, match=message):
        reconstruct_files(plan, scheduler="local:2", **options)
    if "backend" in options:  # a scheduler's workers may have a GPU: only the name is checked
        with pytest.raises(AssertionError, match="a cluster was started"):
            reconstruct_files(plan, scheduler="tcp://127.0.0.1:8786", backend="cuda")


def test_existing_name_with_glob_characters_is_a_file(tmp_path, files):
    literal = tmp_path / "run[0].root"
    literal.write_bytes(files[0].read_bytes())
    assert expand_inputs([str(literal)]) == ([literal], [])
    output = tmp_path / "out.root"
    results = reconstruct_files(plan_outputs([literal], output), backend="cpu")
    assert [r.status for r in results] == ["done"]
    assert_same_vertices(read_vertices(output), expected_vertices(files[0]), weights=False)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_bad_file_in_a_batch_is_reported_and_the_rest_written(tmp_path, files, monkeypatch,
                                                                read_ahead):
    monkeypatch.setattr(distributed, "_reads_ahead", lambda finder: read_ahead)
    not_root = tmp_path / "notes.root"
    not_root.write_text("not a ROOT file")
    inputs = [files[0], not_root, files[4], files[1]]
    seen = []
    results = reconstruct_files(plan_outputs(inputs, tmp_path / "out"), backend="cpu",
                                step_size=7, on_result=seen.append)
    assert seen == results
    status = {result.input: result for result in results}
    assert status[files[0]].status == status[files[1]].status == "done"
    assert "notes.root: not a ROOT file" in status[not_root].error
    assert "nan.root:tracks: branch 'x' is nan in entry 13" in status[files[4]].error
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["run0_pvs.root", "run1_pvs.root"]  # no partial file left behind
    for path in files[:2]:
        assert_same_vertices(read_vertices(tmp_path / "out" / f"{path.stem}_pvs.root"),
                             expected_vertices(path), weights=False)


def test_the_progress_bar_ends_full_and_reports_print_on_lines_of_their_own(tmp_path, files,
                                                                            capsys):
    # The bar stopped at 60 + 10 of 60 + 30 + 40 events when an input failed part-way, and a
    # reporter's line was glued to the end of the bar ("...evt/s]run0.root: ...").
    inputs = [files[0], files[4], files[1]]  # files[4] fails at its entry 13
    reconstruct_files(plan_outputs(inputs, tmp_path / "out"), backend="cpu", step_size=10,
                      progress=True,
                      on_result=lambda result: print(f"REPORT {result.input.name}",
                                                     file=sys.stderr))
    err = capsys.readouterr().err
    assert "130/130" in err.replace("\r", "\n").strip().splitlines()[-1]
    assert err.count("REPORT") == 3 and not re.search(r"[^\r\n]REPORT", err)


def test_merged_output_holds_the_good_inputs_in_order(tmp_path, files):
    output = tmp_path / "merged.root"
    inputs = [files[0], files[4], files[1]]
    results = reconstruct_files(plan_outputs(inputs, output, merge=True), backend="cpu",
                                step_size=25, with_weights=True)
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert [r.first_event for r in results if r.status == "done"] == [0, 60]
    merged = read_vertices(output)
    expected = VertexBatch.concatenate([expected_vertices(files[0]), expected_vertices(files[1])])
    assert_same_vertices(merged, expected)
    with uproot.open(output) as file:
        numbers = file["vertices"]["event_number"].array(library="np")
        # One basket per chunk (3 + 2), as in an output per input: not one per input, whose
        # size would grow with the input's.
        assert file["vertices"]["x"].num_baskets == 5
    np.testing.assert_array_equal(numbers, np.r_[np.arange(60), np.arange(40)])


def test_an_input_the_merged_file_refuses_leaves_nothing_of_itself_there(tmp_path, files):
    # Its first chunk fitted the file, its second not (negative event numbers for uint64):
    # the first was written before the second failed, unrecorded, between the other inputs.
    from pvfinder.simulation import simulate

    sample = simulate(50, seed=40)
    negative = tmp_path / "negative.root"
    write_sample(negative, sample.tracks, event_ids={
        "event_number": np.r_[np.arange(30), -np.arange(1, 21)].astype(np.int64)})
    numbered = tmp_path / "numbered.root"  # identifiers of other names than the file's
    write_sample(numbered, sample.tracks, event_ids=sample.event_ids)
    output = tmp_path / "merged.root"
    inputs = [files[0], negative, numbered, files[1]]
    results = reconstruct_files({output: inputs}, backend="cpu", step_size=25)
    assert [r.status for r in results] == ["done", "failed", "failed", "done"]
    assert results[1].error.startswith(f"{negative}:tracks: not written to {output}: event "
                                       "identifier 'event_number' runs from -20 to 29")
    assert results[2].error.startswith(f"{numbered}:tracks: not written to {output}: these "
                                       "events bring the identifiers (run_number, event_number)")
    # files[0] has no identifier branches: where its event_number came from was not said
    assert results[2].error.endswith("(one without identifier branches brings event_number, "
                                     "its entry)")
    expected = VertexBatch.concatenate([expected_vertices(files[0]), expected_vertices(files[1])])
    assert_same_vertices(read_vertices(output), expected, weights=False)
    assert [r.first_event for r in results if r.status == "done"] == [0, 60]


def test_a_chunk_s_overflow_warning_names_the_file_and_entry(tmp_path, files):
    # The finder counts events from the start of each chunk: "event 0" of the second chunk
    # of 20 is entry 20 of the file.
    config = PVFinderConfig(max_vertices_per_event=2)
    tracks = read_tracks(files[1])
    with pytest.warns(SeedOverflowWarning) as alone:
        find_vertices(tracks.select_events(20, 40), config, backend="cpu")
    expected = 20 + int(alone[0].message.events[0])
    with pytest.warns(SeedOverflowWarning) as caught:
        reconstruct_files({tmp_path / "a.root": [files[1]]}, config=config, backend="cpu",
                          step_size=20)
    messages = [str(item.message) for item in caught]
    assert len(messages) == 2 and all(m.startswith(f"{files[1]}:tracks: ") for m in messages)
    assert f"(entry {expected}: " in messages[1] and caught[1].message.events[0] == expected
    # Passed down, not caught and re-issued: warning filters and registries stay the user's.
    # Jobs in two threads at once leave the process's warning state as it was (catching and
    # re-issuing the warnings left an "always" filter and a dead recorder behind).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeedOverflowWarning)
        filters, shown = list(warnings.filters), warnings.showwarning
        jobs = [threading.Thread(target=reconstruct_files, args=(
            {tmp_path / f"thread{i}.root": [files[1]]},),
            kwargs={"config": config, "backend": "cpu", "step_size": 4}) for i in range(2)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        assert warnings.filters == filters and warnings.showwarning is shown

def test_skip_existing_leaves_finished_outputs(tmp_path, files):
    plan = plan_outputs(files[:2], tmp_path)
    done = tmp_path / "run0_pvs.root"
    reconstruct_files({done: [files[0]]}, backend="cpu")
    finished = done.read_bytes()
    results = reconstruct_files(plan, backend="cpu", skip_existing=True)
    assert [r.status for r in results] == ["skipped", "done"]
    assert done.read_bytes() == finished



def test_an_output_that_cannot_be_created_fails_only_its_inputs(tmp_path, files):
    # Its folder cannot be made (a file is in the way; a read-only disk or a folder without
    # the right to write fail the same way): a traceback stopped every input.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    plan = {blocker / "a.root": [files[0]], tmp_path / "b.root": [files[1]]}
    results = reconstruct_files(plan, backend="cpu")
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].error == (f"{blocker / 'a.root'}: cannot be written, {blocker} is a file, "
                                "not a directory")  # the path once, not twice
    assert_same_vertices(read_vertices(tmp_path / "b.root"), expected_vertices(files[1]),
                         weights=False)

def test_skip_existing_does_not_take_an_incomplete_output_for_done(tmp_path, files):
    # A merged output that an input failed to reach holds only the others' events: resuming
    # must not report that input as done (it was "skipped", exit code 0). The output notes
    # the inputs it holds, so the others are skipped without being opened, even if gone.
    merged = tmp_path / "merged.root"
    first = tmp_path / "first.root"
    first.write_bytes(files[0].read_bytes())
    done = reconstruct_files({merged: [first, files[4]]}, backend="cpu")
    assert [r.status for r in done] == ["done", "failed"]  # files[4] has a NaN state
    assert recorded_inputs(merged) == [str(first.resolve())]
    first.unlink()
    again = reconstruct_files({merged: [first, files[4]]}, backend="cpu", skip_existing=True)
    assert [r.status for r in again] == ["skipped", "failed"]
    assert again[1].error == (f"{merged} exists without the vertices of {files[4]} (it "
                              "failed when that file was written, or was not among its "
                              f"inputs); remove {merged} to redo it")
    # Holding an input the job no longer names is not this job's output either.
    (result,) = reconstruct_files({merged: [files[4]]}, backend="cpu", skip_existing=True)
    assert result.status == "failed"
    assert result.error == (f"{merged} exists with the vertices of {first.resolve()}, which is "
                            f"not among the inputs given for it now; remove {merged} to redo "
                            "them, or write elsewhere")
    # A vertex file that notes no inputs (an earlier pvfinder's) is left as it is.
    other = tmp_path / "run1_pvs.root"
    write_vertices(other, expected_vertices(files[1]))
    before = other.read_bytes()
    (result,) = reconstruct_files({other: [files[1]]}, backend="cpu", skip_existing=True)
    assert result.status == "skipped" and other.read_bytes() == before


def test_skip_existing_takes_only_a_vertex_file_for_done(tmp_path, files):
    # Whatever file was at the output's path counted as done (exit code 0): junk, a file of
    # tracks, a truncated copy, or a vertex file without the weights asked for. Each fails
    # its inputs now, naming what is wrong, and is left as it was.
    vertex_file = tmp_path / "pvs.root"
    reconstruct_files({vertex_file: [files[1]]}, backend="cpu")
    in_the_way = {
        "junk.root": (b"not a vertex file", "not a ROOT file"),
        "tracks.root": (files[0].read_bytes(), "no tree 'vertices'"),
        "truncated.root": (vertex_file.read_bytes()[:2000], "truncated ROOT file"),
    }
    for name, (content, reason) in in_the_way.items():
        output = tmp_path / name
        output.write_bytes(content)
        (result,) = reconstruct_files({output: [files[1]]}, backend="cpu", skip_existing=True)
        assert result.status == "failed"
        assert result.error.startswith(f"{output}: ") and reason in result.error
        assert result.error.endswith("not a vertex file to resume; remove it to redo its "
                                     "inputs")
        assert output.read_bytes() == content
    finished = vertex_file.read_bytes()
    (result,) = reconstruct_files({vertex_file: [files[1]]}, backend="cpu",
                                  with_weights=True, skip_existing=True)
    assert result.status == "failed"
    assert result.error == (f"{vertex_file} exists without the weights asked for; remove it "
                            "to redo its inputs with them")
    assert vertex_file.read_bytes() == finished
    (result,) = reconstruct_files({vertex_file: [files[1]]}, backend="cpu", skip_existing=True)
    assert result.status == "skipped"


def test_next_chunk_is_read_while_this_one_is_reconstructed(files, monkeypatch):
    """Each chunk is reconstructed only once the one after it has been read, also across
    inputs: the first chunk of the next file is read during the last one of this file."""
    read = [threading.Event() for _ in range(5)]  # files[0]: 60 events, files[1]: 40; by 20
    n_read = 0
    read_chunks = TrackSource.read_chunks

    def reading(*args, **kwargs):
        nonlocal n_read
        for chunk in read_chunks(*args, **kwargs):
            read[n_read].set()
            n_read += 1
            yield chunk

    class WaitingFinder:
        """Reconstructs a chunk only once the chunk after it has been read."""

        def __init__(self):
            self.finder, self.overlapped = PVFinder(backend="cpu"), []

        def output_buffers(self):
            return self.finder.output_buffers()

        def __call__(self, tracks, **options):
            following = len(self.overlapped) + 1
            self.overlapped.append(following == len(read) or read[following].wait(timeout=30))
            return self.finder(tracks, **options)

    monkeypatch.setattr(TrackSource, "read_chunks", reading)
    finder = WaitingFinder()
    engine = distributed._LocalEngine(finder, step_size=20, with_weights=False,
                                      read_ahead=True)
    sources = [inspect_tracks(path) for path in files[:2]]
    engine.submit(sources)
    n_events = [sum(len(counts) for _, _, counts in engine.pieces(source)) for source in sources]
    engine.close()
    assert n_events == [60, 40]
    assert finder.overlapped == [True] * 5


def test_next_chunk_is_read_once_this_one_is_reconstructed(files, monkeypatch):
    """Reading in turn: no chunk is read while the finder works, also across inputs."""
    working = threading.Event()
    read_while_working = []
    read_chunks = TrackSource.read_chunks

    def reading(*args, **kwargs):
        for chunk in read_chunks(*args, **kwargs):
            read_while_working.append(working.is_set())
            yield chunk

    class WatchedFinder:
        def __init__(self):
            self.finder = PVFinder(backend="cpu")

        def output_buffers(self):
            return self.finder.output_buffers()

        def __call__(self, tracks, **options):
            working.set()
            time.sleep(0.05)  # time for a reader that did not wait to be caught
            vertices = self.finder(tracks, **options)
            working.clear()
            return vertices

    monkeypatch.setattr(TrackSource, "read_chunks", reading)
    engine = distributed._LocalEngine(WatchedFinder(), step_size=20,
                                      with_weights=False, read_ahead=False)
    sources = [inspect_tracks(path) for path in files[:2]]
    engine.submit(sources)
    n_events = [sum(len(counts) for _, _, counts in engine.pieces(source)) for source in sources]
    engine.close()
    assert n_events == [60, 40]
    assert read_while_working == [False] * 5


def test_reading_ahead_only_where_a_core_is_free(monkeypatch):
    import numba

    finder = PVFinder(backend="cpu")
    cores = numba.get_num_threads()
    monkeypatch.setattr(distributed, "usable_cores", lambda: cores)
    assert not distributed._reads_ahead(finder)
    monkeypatch.setattr(distributed, "usable_cores", lambda: cores + 1)
    assert distributed._reads_ahead(finder)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_input_given_up_on_leaves_the_next_one_whole(files, read_ahead):
    """When the consumer of an input stops early, the next input still gets all its chunks."""
    engine = distributed._LocalEngine(PVFinder(backend="cpu"), step_size=20,
                                      with_weights=True, read_ahead=read_ahead)
    sources = [inspect_tracks(path) for path in files[:2]]
    engine.submit(sources)
    next(engine.pieces(sources[0]))  # the first of three chunks, then given up on
    pieces = list(engine.pieces(sources[1]))
    engine.close()
    assert [len(counts) for _, _, counts in pieces] == [20, 20]


def test_a_stop_just_after_a_chunk_was_asked_for_closes_the_reader_cleanly(files,
                                                                            monkeypatch):
    # A SIGTERM between asking the reader thread for the next chunk and keeping its future:
    # closing the engine raised "generator already executing" (pvfinder exited with 2).
    engine = distributed._LocalEngine(PVFinder(backend="cpu"), step_size=20,
                                      with_weights=False, read_ahead=True)
    reading, released = threading.Event(), threading.Event()
    read_chunks = TrackSource.read_chunks

    def slow(*args, **kwargs):
        for chunk in read_chunks(*args, **kwargs):
            reading.set()
            released.wait(5)
            yield chunk

    monkeypatch.setattr(TrackSource, "read_chunks", slow)
    submit = engine._reader.submit

    def stopped_after_asking(task, *args):
        future = submit(task, *args)
        if task is next:
            raise KeyboardInterrupt
        return future

    monkeypatch.setattr(engine._reader, "submit", stopped_after_asking)
    with pytest.raises(KeyboardInterrupt):
        engine.submit([inspect_tracks(files[0])])
    assert reading.wait(5)
    threading.Timer(0.2, released.set).start()
    engine.close()
    assert released.is_set()  # it waited for the chunk being read


def test_each_input_is_warned_of_once(tmp_path, files):
    # A likely typo in the schema's identifiers was warned of when an input was inspected,
    # and again when it was read (shown twice: uproot's writing resets the once-filter).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reconstruct_files(plan_outputs(files[:3], tmp_path),
                          schema=TrackSchema(event_ids=("evt_number",)), backend="cpu")
    warned = [str(warning.message).split(":")[0] for warning in caught]
    assert warned == [str(path) for path in files[:3]]


def test_an_input_given_twice_is_refused(tmp_path, files):
    with pytest.raises(ValueError, match="given more than once: .*run0.root"):
        reconstruct_files({tmp_path / "a.root": [files[0]], tmp_path / "b.root": [files[0]]},
                          backend="cpu")
    # Also under another name: merged, its events were written twice.
    link = tmp_path / "link.root"
    link.symlink_to(files[0])
    spelled = files[0].parent / ".." / files[0].parent.name / files[0].name
    for other in (link, spelled):
        with pytest.raises(ValueError, match=f"given more than once: {files[0]} = {other}"):
            reconstruct_files({tmp_path / "m.root": [files[0], other]}, backend="cpu")


def test_expanding_keeps_a_file_once_whatever_its_name(tmp_path, files):
    link = tmp_path / "link.root"
    link.symlink_to(files[1])
    nested = tmp_path / "deep" / "er"
    nested.mkdir(parents=True)
    (nested / "run9.root").write_bytes(files[0].read_bytes())
    found, errors = expand_inputs([str(files[1]), str(link), str(tmp_path / "**" / "*.root")])
    assert errors == []
    assert found == [files[1], nested / "run9.root"]  # the link is files[1]: kept once
    # A link that comes first (in sort order) does not give the outputs its name; the
    # folders that "**" also matches are no inputs.
    alias = nested / "a_link.root"
    alias.symlink_to(nested / "run9.root")
    assert expand_inputs([str(nested / "*.root")]) == ([nested / "run9.root"], [])
    assert expand_inputs([str(tmp_path / "deep" / "**")]) == ([nested / "run9.root"], [])


def test_expanding_leaves_out_this_jobs_own_outputs_only(tmp_path, files):
    """A glob over the folder that receives the outputs matches them on a rerun: they are left
    out where they are vertex files recording their inputs, at a place this job writes to."""
    folder = tmp_path / "beside"
    folder.mkdir()
    for path in files[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    pattern = str(folder / "*.root")
    inputs, _ = expand_inputs([pattern])
    assert [r.status for r in reconstruct_files(plan_outputs(inputs, folder), backend="cpu")
            ] == ["done", "done"]
    own = [folder / "run0_pvs.root", folder / "run1_pvs.root"]
    assert expand_inputs([pattern], output=folder) == (inputs, [])
    assert sorted(expand_inputs([pattern])[0]) == sorted([*inputs, *own])  # no output=
    assert expand_inputs([str(inputs[0]), str(folder / "*_pvs.root")], output=folder) == (
        [inputs[0], own[1]], [])  # run1_pvs.root is an input: run1.root is not one
    assert expand_inputs([str(inputs[0]), str(folder / "run0_*")], output=folder) == (
        [inputs[0]], [f"{folder / 'run0_*'}: matches only this job's outputs"])
    # Named without a wildcard, an output stays an input (and the plan is refused).
    assert expand_inputs([pattern, str(own[0])], output=folder) == ([*inputs, own[0]], [])
    # Elsewhere, or not a vertex file of ours, a file named like an output is an input.
    assert sorted(expand_inputs([pattern], output=tmp_path / "elsewhere")[0]) == sorted(
        [*inputs, *own])
    own[1].write_bytes(files[2].read_bytes())  # tracks under an output's name
    assert sorted(expand_inputs([pattern], output=folder)[0]) == sorted([*inputs, own[1]])
    merged = folder / "all.root"
    reconstruct_files(plan_outputs(inputs, merged, merge=True), backend="cpu")
    assert sorted(expand_inputs([pattern], output=merged)[0]) == sorted([*inputs, *own])


@pytest.mark.parametrize("output", ["the input", "the input, spelled another way",
                                    "a directory", "a named pipe"])
def test_a_plan_that_would_lose_data_is_refused(tmp_path, files, monkeypatch, output):
    monkeypatch.chdir(files[0].parent)
    before = files[0].read_bytes()
    pipe = tmp_path / "pipe.root"  # as /dev/null: the rename replaced it with a file
    if output == "a named pipe":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        os.mkfifo(pipe)
    target = {"the input": files[0], "the input, spelled another way": Path(files[0].name),
              "a directory": tmp_path, "a named pipe": pipe}[output]
    message = {"a directory": "is a directory",
               "a named pipe": "pipe.root is a named pipe"}.get(output, "is an input too")
    with pytest.raises(ValueError, match=message):
        reconstruct_files(plan_outputs(files[:2], target, merge=True), backend="cpu")
    assert files[0].read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == (["pipe.root"] if pipe.exists() else [])
    assert not pipe.exists() or pipe.is_fifo()


def test_an_output_that_cannot_be_finished_fails_its_inputs(tmp_path, files, monkeypatch):
    def no_room(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pvfinder_io.os, "replace", no_room)
    seen = []
    results = reconstruct_files(plan_outputs(files[:2], tmp_path / "merged.root", merge=True),
                                backend="cpu", on_result=seen.append)
    assert seen == results and [r.status for r in results] == ["failed", "failed"]
    assert all("merged.root: cannot be written" in r.error and "No space left" in r.error
               for r in results)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone too

def test_a_full_disk_fails_that_output_alone(tmp_path, files, monkeypatch):
    # Finishing the file fails, and closing it to throw it away fails again: that second
    # error escaped, stopped the job before the next output and left the .part behind.
    full = tmp_path / "full.root"
    real_close = pvfinder_io.VertexWriter.close

    def close(writer):
        if writer.path != full:
            return real_close(writer)
        writer._file.close()

        def no_room():
            raise OSError(28, "No space left on device")

        writer._file.close = no_room
        return no_room()

    monkeypatch.setattr(pvfinder_io.VertexWriter, "close", close)
    plan = {full: [files[0]], tmp_path / "fine.root": [files[1]]}
    results = reconstruct_files(plan, backend="cpu")
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].error == f"{full}: cannot be written ([Errno 28] No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.root"]

def test_the_inputs_of_an_output_that_cannot_be_made_are_not_read(tmp_path, files,
                                                                   monkeypatch):
    # The reader read them all the same, for nothing, before going on to the next output.
    read_chunks, chunks_read = TrackSource.read_chunks, collections.Counter()

    def counting(source, *args, **kwargs):
        for chunk in read_chunks(source, *args, **kwargs):
            chunks_read[Path(source.path).name] += 1
            yield chunk

    monkeypatch.setattr(TrackSource, "read_chunks", counting)
    (tmp_path / "file").write_text("in the way")
    plan = {tmp_path / "file" / "a.root": [files[0]], tmp_path / "b.root": [files[1]]}
    results = reconstruct_files(plan, backend="cpu", step_size=20)
    assert [r.status for r in results] == ["failed", "done"]
    assert "is a file, not a directory" in results[0].error
    assert chunks_read[files[0].name] <= 1 and chunks_read[files[1].name] == 2  # of 3, 2


def test_a_write_that_fails_midway_fails_the_whole_merged_output(tmp_path, files, monkeypatch):
    # An I/O error while an input's chunks were appended failed that input alone: the file
    # was kept with part of it, and the next input's first_event was off.
    # The inputs not begun are not read any more (at most the chunk the reader had begun).
    real_write_all, calls = pvfinder_io.VertexWriter.write_all, []
    real_read, chunks_read = TrackSource.read_chunks, collections.Counter()

    def write_all(writer, batches):
        calls.append(writer.path)
        if writer.path.name == "merged.root" and calls.count(writer.path) == 2:
            raise OSError(5, "Input/output error", "/data/merged.root.part")
        return real_write_all(writer, batches)

    def counting(source, *args, **kwargs):
        for chunk in real_read(source, *args, **kwargs):
            chunks_read[Path(source.path).name] += 1
            yield chunk

    monkeypatch.setattr(pvfinder_io.VertexWriter, "write_all", write_all)
    monkeypatch.setattr(TrackSource, "read_chunks", counting)
    merged, alone = tmp_path / "merged.root", tmp_path / "alone.root"
    plan = {merged: [files[0], files[4], files[1], files[2]], alone: [files[3]]}
    results = reconstruct_files(plan, backend="cpu", step_size=25)
    assert [(r.input, r.status) for r in results] == [
        (files[0], "failed"), (files[4], "failed"), (files[1], "failed"), (files[2], "failed"),
        (files[3], "done")]
    assert chunks_read[files[2].name] <= 1 and chunks_read[files[3].name] == 2
    cannot = (f"{merged}: cannot be written ([Errno 5] Input/output error: "
              "'/data/merged.root.part')")
    assert [r.error == cannot for r in results[:4]] == [True, False, True, True]
    assert "nan" in results[1].error  # its own error stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.root"]


class _InProcessClient:
    """A Dask client of one worker thread that computes a partition when its result is
    asked for, noting what it was given."""

    def __init__(self):
        self.computed, self.cancelled = [], []
        self.threads = {"worker": 1}

    def nthreads(self):
        return self.threads

    def compute(self, part):
        self.computed.append(part)
        return types.SimpleNamespace(result=lambda: part.compute(scheduler="sync"),
                                     release=lambda: None, part=part)

    def cancel(self, futures):
        self.cancelled.extend(future.part for future in futures)


def _open_files_among(paths) -> list[str]:
    """Which of ``paths`` this process holds a descriptor on."""
    wanted, held = {str(Path(path).resolve()) for path in paths}, []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target in wanted:
                held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_an_input_s_graph_holds_no_file_open(files):
    """dask-awkward keeps up to 1000 graphs in a cache: graphs that held their file open
    kept a descriptor an input, which a job of a few hundred inputs ran out of."""
    pytest.importorskip("dask_awkward")
    sources = [inspect_tracks(path) for path in files[:4]]
    collections = [vertex_collection(source, step_size=15) for source in sources]
    gc.collect()  # a file opened for the form and let go closes when collected
    assert _open_files_among(files[:4]) == []
    assert [c.npartitions for c in collections] == [4, 3, 5, 4]


def test_dask_engine_builds_an_input_s_graph_when_the_window_reaches_it(files, monkeypatch):
    # All graphs were built at submit, each holding its file open: 300 inputs ran out of
    # file descriptors, and the first partition waited for every graph.
    built = []
    real = distributed._track_partitions
    monkeypatch.setattr(distributed, "_track_partitions",
                        lambda source, step: built.append(source.path) or real(source, step))
    client = _InProcessClient()
    engine = distributed._DaskEngine(client, None, "cpu", 15, False)
    sources = [inspect_tracks(path) for path in files[:4]]  # 4, 3, 5 and 4 partitions
    engine.submit(sources)
    assert built == [sources[0].path] and len(client.computed) == 4
    for source, path in zip(sources, files):
        found = VertexBatch.concatenate([vertices.copy() for vertices, _, _ in
                                         engine.pieces(source)])
        assert_same_vertices(found, expected_vertices(path), weights=False)
    assert built == [source.path for source in sources] and len(client.computed) == 16
    engine.submit(sources[2:])  # one dropped before its turn is never built
    engine.drop(sources[3])
    list(engine.pieces(sources[2]))
    assert built[4:] == [sources[2].path] and not engine.running


def test_an_input_whose_graph_cannot_be_built_fails_alone(tmp_path, files):
    # The next input's graph is built while this one is read: uproot's KeyInFileError (a
    # KeyError) for a tree gone since inspection stopped the input being read, and the job.
    first, second = (shutil.copy(files[i], tmp_path / f"in{i}.root") for i in range(2))
    sources = [inspect_tracks(first), inspect_tracks(second)]
    write_tree(Path(second), {"x": np.zeros(1, np.float32)}, np.ones(1, np.int64), tree="other")
    engine = distributed._DaskEngine(_InProcessClient(), None, "cpu", 15, False)
    engine.submit(sources)
    found = VertexBatch.concatenate([vertices.copy() for vertices, _, _ in
                                     engine.pieces(sources[0])])
    assert_same_vertices(found, expected_vertices(files[0]), weights=False)
    with pytest.raises(ValueError, match=f"^{re.escape(sources[1].where)}: .*tracks"):
        next(engine.pieces(sources[1]))


def test_dask_engine_keeps_a_bounded_number_of_partitions_running(files):
    # Every partition of every input was submitted at once: results the client had not yet
    # written piled up on the workers without bound (13 kB an event with weights).
    client = _InProcessClient()
    engine = distributed._DaskEngine(client, None, "cpu", 15, False)
    sources = [inspect_tracks(path) for path in files[:2]]  # 60 and 40 events: 4 + 3 parts
    engine.submit(sources)
    assert engine.window() == 4 and len(client.computed) == 4  # not all 7 partitions
    assert not any(isinstance(part, list) for part in client.computed)
    for source, path in zip(sources, files):
        pieces = []
        for piece in engine.pieces(source):
            pieces.append(piece)
            assert len(engine.running) <= engine.window()
            if len(client.computed) == 5:  # a worker joins after the job began: counted
                client.threads = {"worker": 1, "joined": 1}
        assert engine.window() == 8
        found = VertexBatch.concatenate([vertices.copy() for vertices, _, _ in pieces])
        assert_same_vertices(found, expected_vertices(path), weights=False)
    assert len(client.computed) == 7 and not engine.running and not client.cancelled


def test_dask_engine_cancels_an_input_it_drops(files):
    # An output that cannot be written drops its inputs not begun: their partitions were
    # left to run, and their vertices held by the cluster until the end.
    client = _InProcessClient()
    engine = distributed._DaskEngine(client, None, "cpu", 15, False)
    first, second = (inspect_tracks(path) for path in files[:2])
    engine.submit([first, second])
    running = [future.part for future in engine.running.values()]
    engine.drop(first)
    assert client.cancelled == running  # its two running partitions
    assert all(path == second.path for path, _ in [*engine.running, *engine.pending])
    engine.drop(second)
    assert not engine.running and not engine.pending and not engine.parts


def test_a_vertex_collection_names_a_bad_step_size(files):
    # uproot's words, about memory size strings, for what pvfinder calls a step size
    with pytest.raises(ValueError, match="step size must be a positive number of entries"):
        vertex_collection(inspect_tracks(files[0]), step_size="1e4")


def test_a_vertex_collection_runs_the_finder_with_its_config(files):
    import dask

    config = PVFinderConfig(chi2_cut=9.0, min_tracks_per_vertex=6)
    parts = dask.compute(*vertex_collection(inspect_tracks(files[0]), config=config,
                                            step_size=20).to_delayed(), scheduler="sync")
    found = VertexBatch.from_awkward(ak.concatenate(parts)["vertices"])
    tracks = read_tracks(files[0])
    assert_same_vertices(found, find_vertices(tracks, config=config, backend="cpu"),
                         weights=False)
    assert found.n_vertices != expected_vertices(files[0]).n_vertices  # not the defaults


def test_dask_graph_in_process_runs_no_kernels_on_typetracers(files, monkeypatch):
    """dask-awkward's metadata pass must not reach the finder and must see every branch as
    needed; partitions carry their entry numbers, so errors name the entry."""
    import dask
    import dask_awkward as dak

    calls = []
    real = distributed._finder

    def counting(config, backend):
        calls.append(backend)
        return real(config, backend)

    monkeypatch.setattr(distributed, "_finder", counting)
    source = inspect_tracks(files[2])
    collection = vertex_collection(source, step_size=20)
    assert collection.npartitions == 4
    (columns,) = dak.necessary_columns(collection).values()
    assert columns == set(source.read_branches)
    assert calls == []
    parts = dask.compute(*collection.to_delayed(), scheduler="sync")
    assert len(calls) == 4
    records = ak.concatenate(parts)
    vertices = VertexBatch.from_awkward(records["vertices"])
    assert_same_vertices(vertices, expected_vertices(files[2]), weights=False)
    np.testing.assert_array_equal(records["event_number"].to_numpy(), np.arange(70))
    assert ak.array_equal(collection.compute(scheduler="sync"), records)  # also whole
    assert ak.array_equal(collection.vertices.z.compute(scheduler="sync"),
                          records["vertices", "z"])
    bad = vertex_collection(inspect_tracks(files[4]), step_size=10)
    with pytest.raises(ValueError, match="nan.root:tracks: branch 'x' is nan in entry 13"):
        dask.compute(*bad.to_delayed(), scheduler="sync")


@pytest.mark.parametrize("kind", ["Double32_t[low,high,24]", "Float16_t"])
def test_dask_graph_unpacks_numbers_root_packs(tmp_path, files, kind, monkeypatch):
    """uproot.dask reads Double32_t and Float16_t lists as the one-process reader does."""
    import dask

    path = tmp_path / "packed.root"
    write_root_lists(path, read_tracks(files[2]), kind, monkeypatch)
    collection = vertex_collection(inspect_tracks(path), step_size=20)
    records = ak.concatenate(dask.compute(*collection.to_delayed(), scheduler="sync"))
    assert_same_vertices(VertexBatch.from_awkward(records["vertices"]),
                         find_vertices(read_tracks(path), backend="cpu"), weights=False)


def test_inputs_given_as_urls_are_listed_planned_and_reconstructed(tmp_path, files, remote,
                                                                    monkeypatch):
    """URLs are globbed by fsspec, named by their file, read through it and recorded as
    they are; a URL as the output is refused before anything is made."""
    urls = [remote.put(path) for path in files[:2]]
    remote.filesystem.mkdir(f"{remote.folder}/folder.root")  # matched, but not a file
    spelled_otherwise = urls[0].replace("memory://", "memory:///")
    found, errors = expand_inputs([remote.url("*.root"), spelled_otherwise, str(files[2]),
                                   remote.url("none*.root"), "nosuch://host/*.root"])
    assert [pvfinder_io.input_identity(name) for name in found] == [
        *map(pvfinder_io.input_identity, urls), str(files[2])]
    assert errors == [f"{remote.url('none*.root')}: no file matches",  # in the patterns' order
                      ("nosuch://host/*.root: cannot be listed (ValueError: Protocol not "
                       "known: nosuch)")]
    plan = plan_outputs(found, tmp_path / "out")
    assert list(plan) == [tmp_path / "out" / f"run{i}_pvs.root" for i in range(3)]
    with pytest.raises(ValueError, match="given more than once"):
        reconstruct_files({tmp_path / "a.root": urls[:1], tmp_path / "b.root": [spelled_otherwise]})
    results = reconstruct_files(plan, backend="cpu", step_size=25)
    assert [result.status for result in results] == ["done"] * 3
    assert [result.input for result in results] == found
    for result, path in zip(results, files[:3]):
        assert_same_vertices(read_vertices(result.output), expected_vertices(path), weights=False)
        assert recorded_inputs(result.output) == [pvfinder_io.input_identity(result.input)]
    resumed = reconstruct_files(plan, backend="cpu", skip_existing=True)
    assert [result.status for result in resumed] == ["skipped"] * 3
    monkeypatch.chdir(tmp_path)
    for output in ("root://host//pvs/", "root://host//pvs.root"):
        with pytest.raises(ValueError, match=f"^{output}: a URL; pvfinder writes files on "
                                             "this machine only"):
            plan_outputs(urls, output, merge=output.endswith(".root"))
    with pytest.raises(ValueError, match="a URL; pvfinder writes files"):
        reconstruct_files({"root://host//pvs.root": urls})
    # Expanding leaves the refusal of a URL output to the planning.
    assert expand_inputs([str(files[0])], output="root://host//out/") == ([files[0]], [])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_dask_reads_a_url_as_the_process_does(tmp_path, files, remote):
    """An in-process cluster (its workers share this process's in-memory filesystem)."""
    from distributed import LocalCluster

    url = remote.put(files[2])
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                      dashboard_address=None) as cluster:
        [result] = reconstruct_files(plan_outputs([url], tmp_path), backend="cpu", step_size=25,
                                     scheduler=cluster.scheduler_address)
    assert (result.status, result.input, result.n_events) == ("done", url, 70)
    assert_same_vertices(read_vertices(result.output), expected_vertices(files[2]),
                         weights=False)


class _RangeRequests(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files whole or by byte range (``Range: bytes=a-b``), as remote
    storage does for uproot (Python's own handler ignores ranges), and its folders'
    listings. What lies in a folder ``forbidden`` is answered 403, and a file whose name
    starts with ``sizeless`` has no length unless a range is asked for."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if "forbidden" in path.parts:
            self.send_error(403)
            return None
        if path.is_dir():
            return super().send_head()
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, stop = (int(asked[1]), int(asked[2] or len(data) - 1) + 1) if asked else (0, None)
        body = data[start:stop]
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        if asked or not path.name.startswith("sizeless"):
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "GET":
            self.server.bytes_sent += len(body)
        return io.BytesIO(body)


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on loopback, and its URL."""
    pytest.importorskip("aiohttp", reason="fsspec reads http:// with aiohttp")
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_RangeRequests, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        server.bytes_sent = 0
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", server
        server.shutdown()
        thread.join()


def test_inputs_over_http_give_the_local_files_vertices_also_on_dask_workers(
        tmp_path, files, http_folder):
    """Remote storage as a cluster sees it: worker processes read the inputs over the
    network themselves."""
    folder, address, _ = http_folder
    for path in files[:2]:
        shutil.copy(path, folder)
    # The query, as in a URL with a token, is part of the name, not a wildcard: a missing
    # file is kept for the reading to report, not "no file matches".
    urls = [f"{address}/{path.name}?authz=t0k3n" for path in files[:2]]
    missing = f"{address}/nope.root?authz=t0k3n"
    assert expand_inputs([*urls, missing]) == ([*urls, missing], [])
    for scheduler in (None, "local:2"):
        out = tmp_path / f"out-{scheduler}"
        results = {result.input: result for result in reconstruct_files(
            plan_outputs([*urls, missing], out), backend="cpu", step_size=25,
            scheduler=scheduler)}
        assert results.pop(missing).error == f"{missing}: no such file"
        assert list(results) == urls
        for result, path in zip(results.values(), files):
            assert result.status == "done"
            assert_same_vertices(read_vertices(result.output), expected_vertices(path),
                                 weights=False)


def test_http_listings_and_failures_fail_only_their_own_input(tmp_path, files, http_folder):
    """A folder listed by its server, a forbidden one (403 to its listing and to its files),
    and a server that gives no file size (uproot does not need it): each failure is its
    input's alone, named, and no crash ends the job."""
    folder, address, _ = http_folder
    (folder / "forbidden").mkdir()
    shutil.copy(files[0], folder / "forbidden" / "run0.root")
    shutil.copy(files[1], folder / "sizeless1.root")
    shutil.copy(files[2], folder / "run2.root")
    forbidden = f"{address}/forbidden/run0.root"
    # A character class is a wildcard too, and each match keeps the pattern's query.
    assert expand_inputs([f"{address}/run[0-9].root?authz=t0k3n"]) == (
        [f"{address}/run2.root?authz=t0k3n"], [])
    found, errors = expand_inputs([f"{address}/*.root", f"{address}/forbidden/*.root",
                                   forbidden])
    assert found == [f"{address}/run2.root", f"{address}/sizeless1.root", forbidden]
    [error] = errors
    assert error.startswith(f"{address}/forbidden/*.root: cannot be listed (ClientResponseError: "
                            "403, message='Forbidden'")
    results = reconstruct_files(plan_outputs(found, tmp_path), backend="cpu", step_size=25)
    assert [(result.input, result.status) for result in results] == [
        (forbidden, "failed"), (found[0], "done"), (found[1], "done")]
    assert results[0].error.startswith(f"{forbidden}: cannot be read (ClientResponseError: "
                                       "403, message='Forbidden'")
    for result, path in zip(results[1:], files[2:0:-1]):
        assert_same_vertices(read_vertices(result.output), expected_vertices(path),
                             weights=False)


def test_inspecting_a_url_reads_little_of_it(files, http_folder):
    """The header check asked for the first 20 bytes through fsspec's file object, which
    reads 5 MB ahead: the whole of a smaller file, before uproot read what it needs."""
    folder, address, server = http_folder
    shutil.copy(files[2], folder)
    inspect_tracks(f"{address}/{files[2].name}")
    assert server.bytes_sent < files[2].stat().st_size / 4, server.bytes_sent


def test_a_rerun_with_a_fresh_token_resumes_and_no_token_is_written(tmp_path, files,
                                                                    http_folder):
    folder, address, _ = http_folder
    for path in files[:2]:
        shutil.copy(path, folder)
    names = [f"{address}/{path.name}" for path in files[:2]]
    first = reconstruct_files({tmp_path / "all.root": [f"{name}?authz=old" for name in names]},
                              backend="cpu", step_size=25)
    assert [result.status for result in first] == ["done", "done"]
    assert recorded_inputs(tmp_path / "all.root") == names
    again = reconstruct_files({tmp_path / "all.root": [f"{name}?authz=new" for name in names]},
                              backend="cpu", skip_existing=True)
    assert [result.status for result in again] == ["skipped", "skipped"]


def test_a_url_s_query_is_for_access_not_for_naming_a_file(tmp_path, files):
    """A URL's query is taken for a token or a signature: two URLs that differ by it alone
    are one file, said so when both are given. Chained URLs (members of two archives, a
    cached copy) are each an input, named after their file."""
    signed = "https://host/k.root?X-Amz-Date=1&X-Amz-Expires=60&X-Amz-Signature=abc"
    assert pvfinder_io.input_identity(signed) == "https://host/k.root"
    # So are a user and password in the address: never recorded in an output.
    assert pvfinder_io.input_identity("https://me:secret@host/k.root") == "https://host/k.root"
    assert pvfinder_io.input_identity("root://me@host//k.root") == "root://host//k.root"
    named = ["https://host/get?file=a.root", "https://host/get?file=b.root"]
    assert expand_inputs(named) == (named[:1], [
        (f"{named[1]}: left out, one file with {named[0]}; a URL's query is taken for access "
         "(a token), not for the file it names")])
    with pytest.raises(ValueError, match="given more than once"):
        reconstruct_files({tmp_path / "a.root": named[:1], tmp_path / "b.root": named[1:]})
    chained = [f"zip://run1.root::file://{tmp_path}/a.zip", f"zip://run2.root::file://{tmp_path}/a.zip",
               "simplecache::https://host/run3.root?authz=t0k3n", "memory://run4.root",
               "https://host/run5.root?v=1.2", "https://host/run%206.root/"]
    assert expand_inputs([*chained, "simplecache::memory://data/*.root"]) == (
        [*chained, "simplecache::memory://data/*.root"], [])  # a chain is not listed
    assert plan_outputs(chained, tmp_path) == {
        tmp_path / f"{stem}_pvs.root": [url]
        for stem, url in zip(["run1", "run2", "run3", "run4", "run5", "run 6"], chained)}
    same_member = []  # fsspec's spelling of a chain drops it: both were zip://run1.root
    for archive in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / archive, "w") as packed:
            packed.write(files[0], "run1.root")
        same_member.append(f"zip://run1.root::file://{tmp_path / archive}")
    assert expand_inputs(same_member) == (same_member, [])


def test_expanding_leaves_out_the_outputs_written_for_urls(tmp_path, files, remote):
    """Their names come from the URLs' files (decoded: run%202.root gives 'run 2_pvs.root');
    the output folder may be given as file://."""
    url, out = remote.put(files[2], "run%202.root"), tmp_path / "out"
    reconstruct_files(plan_outputs([url], out), backend="cpu")
    assert [path.name for path in out.iterdir()] == ["run 2_pvs.root"]
    for output in (out, f"file://{out}/"):
        assert expand_inputs([url, str(out / "*.root")], output=output) == (
            [url], [f"{out / '*.root'}: matches only this job's outputs"])


def test_a_url_whose_name_looks_like_a_glob_is_that_file(tmp_path, files, remote):
    import dask

    odd = remote.put(files[2], "run[1].root")
    remote.put(files[1], "run1.root")  # what the pattern run[1].root matches
    assert expand_inputs([odd]) == ([odd], [])
    [result] = reconstruct_files(plan_outputs([odd], tmp_path), backend="cpu")
    expected = expected_vertices(files[2])
    assert_same_vertices(read_vertices(result.output), expected, weights=False)
    parts = dask.compute(*vertex_collection(inspect_tracks(odd), step_size=40).to_delayed(),
                         scheduler="sync")
    assert_same_vertices(VertexBatch.from_awkward(ak.concatenate(parts)["vertices"]), expected,
                         weights=False)


def test_a_file_url_is_the_local_file(tmp_path, files):
    """uproot reads file:// as a local file: it is one input with the file's own name."""
    as_url = f"file://{files[0]}"
    assert expand_inputs([str(files[0]), as_url]) == ([files[0]], [])
    with pytest.raises(ValueError, match="given more than once"):
        reconstruct_files({tmp_path / "a.root": [files[0]], tmp_path / "b.root": [as_url]})
    assert plan_outputs([as_url], tmp_path) == {tmp_path / "run0_pvs.root": [files[0]]}
    assert plan_outputs([files[0]], f"file://{tmp_path}/out.root") == {
        tmp_path / "out.root": [files[0]]}


def test_dask_reads_a_file_whose_name_looks_like_a_glob(tmp_path, files):
    # uproot.dask took "run[1].root" as a pattern and read run1.root beside it, exit 0.
    import dask

    odd, decoy = tmp_path / "run[1].root", tmp_path / "run1.root"
    shutil.copy(files[2], odd)
    shutil.copy(files[1], decoy)
    parts = dask.compute(*vertex_collection(inspect_tracks(odd), step_size=40).to_delayed(),
                         scheduler="sync")
    vertices = VertexBatch.from_awkward(ak.concatenate(parts)["vertices"])
    assert_same_vertices(vertices, expected_vertices(files[2]), weights=False)


def test_dask_names_a_backend_the_workers_cannot_run(files):
    # Reported as the input's own error, not as "cannot read the entries from 0 on (...)".
    import dask

    from pvfinder.backends import available_backends

    if available_backends()["cuda"] is None:
        pytest.skip("CUDA runs here: no unavailable backend to ask for")
    collection = vertex_collection(inspect_tracks(files[1]), backend="cuda")
    with pytest.raises(ValueError, match=r"run1.root:tracks: not reconstructed on worker "
                                         r"\(this process\): .*cuda"):
        dask.compute(*collection.to_delayed(), scheduler="sync")

def test_dask_threaded_scheduler_gives_each_thread_its_own_finder(files):
    """dask.compute's default for delayed parts runs them on threads of this process: one
    finder shared by them was called from two threads at once (corrupt weights, or a crash)."""
    import dask

    expected = find_vertices(read_tracks(files[2]), backend="cpu")
    collection = vertex_collection(inspect_tracks(files[2]), step_size=5, with_weights=True)
    for _ in range(3):
        parts = dask.compute(*collection.to_delayed(), scheduler="threads", num_workers=4)
        found = VertexBatch.from_awkward(ak.concatenate(parts)["vertices"])
        assert_same_vertices(found, expected)


def test_dask_local_cluster_matches_single_process(tmp_path, files, capfd):
    """Four files (and two bad ones) on a LocalCluster of 2 worker processes on loopback: the
    same outputs, bit for bit, and the same errors as the single-process run."""
    single = reconstruct_files(plan_outputs(files, tmp_path / "single"), backend="cpu",
                               step_size=25, with_weights=True)
    on_dask = reconstruct_files(plan_outputs(files, tmp_path / "dask"), backend="cpu",
                                step_size=25, with_weights=True, scheduler="local:2")
    assert [r.status for r in on_dask] == [r.status for r in single] == (
        ["done"] * 4 + ["failed"] * 2 + ["done", "failed"])
    assert "nan.root:tracks: branch 'x' is nan in entry 13" in on_dask[4].error
    # A codec error on a worker is reported as the reader in this process reports it.
    assert "damaged.root:tracks: cannot read the entries from 75 on (" in single[5].error
    assert on_dask[5].error == single[5].error
    assert "badheader.root:tracks: cannot read the entries from 75 on (ValueError" in (
        single[7].error)
    assert on_dask[7].error == single[7].error
    for one, other in zip(single[:4] + single[6:7], on_dask[:4] + on_dask[6:7]):
        assert (one.n_events, one.n_vertices) == (other.n_events, other.n_vertices)
        assert_same_vertices(read_vertices(other.output), read_vertices(one.output))
        for tree in ("vertices", "vertex_weights"):  # every branch, event ids included
            mine, theirs = (uproot.open(r.output)[tree].arrays() for r in (one, other))
            assert ak.fields(mine) == ak.fields(theirs)
            assert ak.array_equal(mine, theirs, dtype_exact=True)
    assert not (tmp_path / "dask" / "nan_pvs.root").exists()
    # The errors are the results'; the workers logged each again ("Compute Failed", with
    # its traceback) on the terminal.
    assert "Compute Failed" not in capfd.readouterr().err


def _blocked_stops() -> set[int]:
    return {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])} & {
        signal.SIGINT, signal.SIGTERM}


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
def test_a_ctrl_c_interrupts_this_process_not_the_local_workers():
    # The terminal sends SIGINT to the whole process group: each worker printed a traceback,
    # and the scheduler logged the workers' lost connections while closing. SIGTERM keeps
    # its default in the workers: Dask's and multiprocessing's terminate() send it.
    terminal = io.StringIO()  # a console handler of Dask's logger, as Dask's own
    handler = logging.StreamHandler(terminal)
    logging.getLogger("distributed").addHandler(handler)
    term = signal.getsignal(signal.SIGTERM)
    try:
        with dask_client("local:1") as client:
            assert list(client.run(_blocked_stops).values()) == [{signal.SIGINT}]
            assert not _blocked_stops()
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is term
            for name in ("distributed.scheduler", "distributed.batched"):
                logging.getLogger(name).error("quiet")
            cluster, close = client.cluster, client.cluster.close

            def closing() -> None:  # Dask's own quiet ends inside close()
                close()
                logging.getLogger("distributed.batched").error("quiet while closing")

            cluster.close = closing
        logging.getLogger("distributed.batched").error("heard again")
    finally:
        logging.getLogger("distributed").removeHandler(handler)
    assert terminal.getvalue() == "heard again\n"


class _Stopped(BaseException):
    pass


def _stop(signum, frame):
    raise _Stopped


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
def test_a_ctrl_c_while_the_workers_start_is_raised_once_they_can_be_closed(monkeypatch):
    # It was ignored while they started: the job then ran to its end. (A SIGTERM is not
    # held there: sent to the whole group it ends the workers, and the start waited for them.)
    import distributed as dask_distributed

    started, start = [], dask_distributed.LocalCluster

    def stopped_while_starting(**options):
        signal.raise_signal(signal.SIGINT)
        started.append(start(**options))
        return started[-1]

    monkeypatch.setattr(dask_distributed, "LocalCluster", stopped_while_starting)
    with pytest.raises(KeyboardInterrupt), dask_client("local:1"):
        pytest.fail("the Ctrl-C was not raised")
    assert started[0].status.name == "closed"
    assert not _blocked_stops()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
def test_holding_stops_keeps_the_callers_signal_mask():
    # SIGINT and SIGTERM came out unblocked whatever the caller had blocked.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with distributed._stops_held(sigterm=True):
            pass
        assert _blocked_stops() == {signal.SIGTERM}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_the_cluster_closes_is_raised_once_it_has_closed(capfd, stop):
    # It cut the closing short: the rest happened at exit, 10 s later and with Dask's logs.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with pytest.raises(KeyboardInterrupt if stop == signal.SIGINT else _Stopped), \
                dask_client("local:1") as client:
            cluster, close = client.cluster, client.cluster.close

            def stopped_while_closing():
                signal.raise_signal(stop)
                close()

            cluster.close = stopped_while_closing
        assert signal.getsignal(signal.SIGTERM) is _stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cluster.status.name == "closed"
    assert not _blocked_stops() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "distributed" not in capfd.readouterr().err


def test_two_local_clusters_at_once_start_quietly():
    # The scheduler's HTTP server took port 8787 even without a dashboard: a second job
    # warned "Port 8787 is already in use. Perhaps you already have a cluster running?"
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8787))
        except OSError:
            pass  # taken already, which does as well
        taken.listen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dask_client("local:1") as client:
                server = client.cluster.scheduler.http_server
                host, port = server.address, server.port
    assert [str(warning.message) for warning in caught] == []
    assert host == "127.0.0.1" and port != 8787  # loopback only, as the cluster


@pytest.mark.parametrize(("scheduler", "message"), [
    ("local:0", "positive number of workers"),
    # Dask said "invalid literal for int() with base 10: 'abc'", naming no address
    ("host:abc", r"scheduler 'host:abc' is neither local\[:N\] nor a scheduler's address"),
    ("bogus", "scheduler 'bogus' is neither .* \\(missing port number"),
])
def test_a_bad_scheduler_is_named(scheduler, message):
    pytest.importorskip("distributed")
    with pytest.raises(ValueError, match=message), dask_client(scheduler):
        pass


def test_dask_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_awkward", None)
    with pytest.raises(ImportError, match=r'pip install "pvfinder\[dask\]"'), \
            dask_client("local:1"):
        pass


def test_local_cluster_is_sized_by_the_cores_the_process_may_use(monkeypatch):
    dask_distributed = pytest.importorskip("distributed")
    seen = {}

    @contextlib.contextmanager
    def cluster(**options):
        seen.update(options)
        yield "cluster"

    monkeypatch.setattr(dask_distributed, "LocalCluster", cluster)
    monkeypatch.setattr(dask_distributed, "Client", lambda _: contextlib.nullcontext("client"))
    monkeypatch.setattr(distributed, "usable_cores", lambda: 3)  # a batch slot of 3 cores
    with dask_client("local") as client:
        assert client == "client"
    assert seen["n_workers"] == 3 and seen["env"] == {"NUMBA_NUM_THREADS": "1"}
    with dask_client("local:1"):
        pass
    assert seen["n_workers"] == 1 and seen["env"] == {"NUMBA_NUM_THREADS": "3"}


def test_io_benchmark_times_each_part_and_checks_dask_agrees(tmp_path, monkeypatch):
    from pvfinder import benchmark_io
    from pvfinder.benchmark_io import run_io_benchmark

    finishing = benchmark_io.VertexWriter.close

    def slow_close(writer):  # finishing the file is part of writing it
        time.sleep(0.3)
        return finishing(writer)

    monkeypatch.setattr(benchmark_io.VertexWriter, "close", slow_close)
    result = run_io_benchmark(n_events=120, n_files=2, workers=1, input_compressions=("lz4",),
                              directory=tmp_path, repeats=1)
    assert result["kind"] == "io" and result["sample"]["events"] == 120
    (run,) = result["runs"]
    assert run["input_compression"] == "lz4" and run["dask_matches_single"] is True
    seconds = {name: row["seconds"] for name, row in run["measurements"].items()}
    assert set(seconds) == {"read_and_convert", "reconstruction", "write", "end_to_end",
                            "end_to_end_dask"}
    assert all(value > 0 for value in seconds.values())
    assert seconds["write"] >= 0.3
    cpu = {name: row["cpu_seconds"] for name, row in run["measurements"].items()
           if "cpu_seconds" in row}
    assert set(cpu) == {"read_and_convert", "reconstruction", "end_to_end"}
    assert all(value > 0 for value in cpu.values())
    # The shares come from the unrounded times; the file's seconds are rounded to 1 ms.
    read, reco = seconds["read_and_convert"], seconds["reconstruction"]
    rounding = 0.0005 / read + 0.0005 / reco
    assert run["io_overhead"]["read_and_convert"] == pytest.approx(read / reco,
                                                                    rel=rounding + 1e-3)
    assert list(tmp_path.iterdir()) == []  # the files are removed afterwards
