"""The JSONL manifest source: line indexing, path resolution, malformed lines as ExampleErrors."""
import concurrent.futures
import json
import pickle

import numpy as np
import pytest
from etils import epath

from omni_jax.data.errors import ExampleError
from omni_jax.data.manifest import ManifestSource, resolve

TURNS = [{"from": "human", "value": "<video>\nfeel?"}, {"from": "gpt", "value": "happy"}]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_lines_indexed_and_read_on_demand(tmp_path):
    entries = [{"id": f"c{i}", "video": f"v{i}.mp4", "conversations": TURNS} for i in range(5)]
    lines = [json.dumps(e) for e in entries]
    manifest = _write(tmp_path / "m.jsonl", lines[:2] + ["", "   "] + lines[2:])
    source = ManifestSource(manifest)
    assert len(source) == 5  # blank lines are not examples
    assert [source[i].number for i in range(5)] == [1, 2, 5, 6, 7]
    assert [source.parse(source[i]).id for i in (4, 0, 3)] == ["c4", "c0", "c3"]  # random access, any order
    clone = pickle.loads(pickle.dumps(source))  # as a grain worker receives it
    assert clone[2].text == source[2].text == (lines[2] + "\n").encode()
    assert source._starts.nbytes == 8 * 5  # offsets only: nothing parsed is held


def test_faces_by_time_keep_their_times(tmp_path):
    line = json.dumps({"video": "a.mp4", "faces": [{"t": 0, "box": [1, 2, 30, 40]}, {"t": 0.04, "box": None,
                                                                                        "score": 0.2}],
                       "conversations": TURNS})
    source = ManifestSource(_write(tmp_path / "m.jsonl", [line]))
    record = source.parse(source[0])
    assert record.faces == ((1.0, 2.0, 30.0, 40.0), None) and record.face_times == (0.0, 0.04)


def test_paths_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    line = json.dumps({"video": "clips/a.mp4", "audio": "/abs/a.wav", "faces": [[1, 2, 30, 40], None],
                       "conversations": TURNS})
    source = ManifestSource(_write(tmp_path / "sub" / "m.jsonl", [line]))
    record = source.parse(source[0])
    assert record.video == epath.Path(tmp_path / "sub" / "clips" / "a.mp4")
    assert record.audio == epath.Path("/abs/a.wav")
    assert record.faces == ((1.0, 2.0, 30.0, 40.0), None)
    assert record.id == "m.jsonl:1" and record.where.endswith("m.jsonl:1")  # no id: the line names it
    assert str(resolve("gs://bucket/a.mp4", epath.Path("/data"))) == "gs://bucket/a.mp4"


@pytest.mark.parametrize("line,match", [
    ('{"id": "x", "conversations": [', "not JSON"),
    ("[1, 2]", "JSON object, got list"),
    ('{"id": "x", "video": "a.mp4"}', "'conversations'"),
    ('{"video": 3, "conversations": []}', "'video' must be a path"),
    ('{"faces": [[1, 2, 3]], "conversations": []}', "face box"),
    ('{"faces": "none", "conversations": []}', "by time or per frame"),
    ('{"faces": [{"t": "0.5", "box": null}], "conversations": []}', "a timed face"),
    ('{"faces": [{"t": 0.5, "box": [1, 2]}], "conversations": []}', "face box"),
])
def test_malformed_lines_are_example_errors_naming_the_line(tmp_path, line, match):
    manifest = _write(tmp_path / "m.jsonl", [json.dumps({"conversations": TURNS}), line])
    source = ManifestSource(manifest)
    with pytest.raises(ExampleError, match=match) as error:
        source.parse(source[1])
    assert error.value.reason == "malformed_json"
    assert f"{manifest}:2" in str(error.value)


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        ManifestSource(tmp_path / "absent.jsonl")


def test_concurrent_reads_get_their_own_lines(tmp_path):
    # grain's MapDataset iterator reads the source from a pool of threads (16 by default)
    lines = [json.dumps({"id": f"c{i}", "pad": "x" * (i * 37 % 500), "conversations": TURNS}) for i in range(200)]
    source = ManifestSource(_write(tmp_path / "m.jsonl", lines))
    indices = np.random.default_rng(0).integers(0, len(lines), 20_000)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: source[i].text, indices, chunksize=64))
    wrong = [i for i, text in zip(indices, got) if text != (lines[i] + "\n").encode()]
    assert not wrong, f"{len(wrong)} of {len(indices)} reads returned another line"
