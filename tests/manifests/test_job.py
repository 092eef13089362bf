"""`omni-jax manifest` as a job: the class table overridden, missing clips counted and not fatal,
an existing OUT refused, the choices of a labels folder checked, the command line, and the
written manifests read by the project's own manifest reader and evaluators' reference checks."""
import json

import pytest

from omni_jax import cli
from omni_jax.config_flags import load_config
from omni_jax.configs import omni_emotion
from omni_jax.data.manifest import ManifestSource
from omni_jax.errors import InputError, MissingInputError, OutputExistsError
from omni_jax.eval.evaluators import EmotionClassification, OpenVocabulary, ReasoningJudge
from omni_jax.manifests import job
from omni_jax.manifests.vocabulary import Vocabulary

VOCABULARY = Vocabulary.from_evals(omni_emotion.evals_config())


def run(name, labels, media, out, phase="", split="", fold=0, classes=""):
    """The job as `omni-jax manifest --format NAME` runs it, with the manifest config's fields."""
    cfg = load_config("manifest")
    cfg.manifest.update(phase=phase, split=split, fold=fold, classes=str(classes))
    return job.run(cfg, format=name, labels=labels, media=media, out=out)


@pytest.fixture
def dfew(tmp_path):
    """A DFEW fold folder (test, fold 1) of three clips, two of them under media/."""
    split = tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)"
    split.mkdir(parents=True)
    (split / "set_1.csv").write_text("video_name,label\n1,1\n2,2\n3,3\n")
    (tmp_path / "media").mkdir()
    for name in ("00001.mp4", "00002.mp4"):
        (tmp_path / "media" / name).write_text("")
    return tmp_path / "EmoLabel_DataSplit", tmp_path / "media"


def test_the_class_table_is_overridden_by_a_json_file(tmp_path, dfew):
    labels, media = dfew
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"1": "Happiness", "2": "Calm", "3": "neutral"}))
    summary = run("dfew", labels, media, tmp_path / "out.jsonl", split="test", fold=1,
                      classes=classes)
    assert [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["happy",
                                                                                                         "calm"]
    assert summary["labels"] == {"calm": 1, "happy": 1}
    classes.write_text(json.dumps({"1": "happy", "2": ""}))
    with pytest.raises(InputError, match=r"classes.json: key '2': expected a class name, found ''"):
        run("dfew", labels, media, tmp_path / "other.jsonl", split="test", fold=1, classes=classes)


def test_missing_media_is_counted_and_an_existing_out_refused(tmp_path, dfew):
    labels, media = dfew
    out = tmp_path / "out.jsonl"
    summary = run("dfew", labels, media, out, split="test", fold=1)
    assert (summary["lines"], summary["rows"], summary["skipped"]) == (2, 3, {"missing_media": 1})
    written = out.read_text()
    with pytest.raises(OutputExistsError, match="out.jsonl already exists"):
        run("dfew", labels, media, out, split="test", fold=1)
    assert out.read_text() == written
    for clip in media.iterdir():
        clip.unlink()
    with pytest.raises(InputError, match=r"none of the 3 rows .* made a line: .*set_1.csv:2: 00001: no 00001 or 1"):
        run("dfew", labels, media, tmp_path / "none.jsonl", split="test", fold=1)
    assert not (tmp_path / "none.jsonl").exists()


@pytest.mark.parametrize("options, error, message", [
    (dict(split="test"), InputError,
     r"--format dfew with a --labels folder takes --config.manifest.fold \(one of \(1, 2, 3, 4, 5\)\)"),
    (dict(split="dev", fold=1), InputError, r"--config.manifest.split=dev: dfew has \('train', 'test'\)"),
    (dict(split="train", fold=1), MissingInputError, r"no train\(single-labeled\)/set_1.csv or set_1/train.csv"),
    (dict(split="test", fold=1, phase="audio_alignment"), InputError,
     r"--config.manifest.phase=audio_alignment: dfew can write \['eval', 'face_alignment', 'instruction_tuning'\]"),
])
def test_the_choices_of_a_labels_folder_are_checked(tmp_path, dfew, options, error, message):
    labels, media = dfew
    with pytest.raises(error, match=message):
        run("dfew", labels, media, tmp_path / "out.jsonl", **options)


def test_a_labels_file_takes_no_split(tmp_path, dfew):
    labels, media = dfew
    with pytest.raises(InputError, match=r"--config.manifest.split=test: dfew with --labels .*set_1.csv has no splits"):
        run("dfew", labels / "test(single-labeled)" / "set_1.csv", media, tmp_path / "o.jsonl", split="test")


def test_the_command_line(tmp_path, dfew, capsys):
    labels, media = dfew
    out = tmp_path / "m" / "dfew_test.jsonl"
    argv = ["manifest", "--format", "dfew", "--labels", str(labels), "--media", str(media), "--out", str(out),
            "--config.manifest.split=test", "--config.manifest.fold=1", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert {k: result[k] for k in ("ok", "lines", "rows", "skipped", "labels")} == {
        "ok": True, "lines": 2, "rows": 3, "skipped": {"missing_media": 1}, "labels": {"happy": 1, "sad": 1}}
    assert json.loads(out.read_text().splitlines()[0])["video"] == str(media / "00001.mp4")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().endswith("dfew_test.jsonl: exists; choose a new output file (nothing is "
                                                    "overwritten)")


def _parsed(manifest, question=None):
    source = ManifestSource(manifest, question=question)
    return [source.parse(source[i]) for i in range(len(source))]


def test_the_written_manifests_are_read_by_the_pipeline_and_pass_the_evaluators_checks(tmp_path, dfew):
    labels, media = dfew
    evals = omni_emotion.evals_config()
    out = tmp_path / "manifests"
    run("dfew", labels, media, out / "eval.jsonl", split="test", fold=1)
    run("dfew", labels, media, out / "face.jsonl", phase="face_alignment", split="test", fold=1)
    EmotionClassification.check_references("dfew", str(out / "eval.jsonl"), classes=evals.dfew.classes)
    records = _parsed(out / "eval.jsonl", evals.dfew.question)
    assert [(r.id, r.video, r.extra["label"]) for r in records] == [("00001", media / "00001.mp4", "happy"),
                                                                     ("00002", media / "00002.mp4", "sad")]
    assert records[0].conversations == [{"from": "human", "value": "<video>\n" + evals.dfew.question}]
    records = _parsed(out / "face.jsonl")
    assert [r.conversations[1]["value"] for r in records] == ["happy", "sad"] and "label" not in records[0].extra

    (tmp_path / "emer.csv").write_text("name,english,openset\n00001,She beams.,\"['joyful', 'relieved']\"\n")
    run("emer", tmp_path / "emer.csv", media, out / "emer.jsonl", phase="eval")
    OpenVocabulary.check_references("emer_ov", str(out / "emer.jsonl"))
    ReasoningJudge.check_references("emer", str(out / "emer.jsonl"))
    assert _parsed(out / "emer.jsonl", evals.emer.question)[0].extra == {
        "source": "emer", "labels": ["joyful", "relieved"], "description": "She beams."}
