"""The command line itself: --json anywhere, every input path checked before anything runs."""
import json

import pytest

from omni_jax import cli


def test_json_is_accepted_after_the_subcommand(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "a", "answer": "Happy.", "label": "happy"}) + "\n")
    for argv in (["--json", "score", "--task", "emotion_classification", "--predictions", str(predictions)],
                 ["score", "--task", "emotion_classification", "--predictions", str(predictions), "--json"]):
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["war"] == 1.0


@pytest.mark.parametrize("argv", [
    ["data-check", "--manifest", "{tmp}/m.jsonl", "--tokenizer", "{tmp}/no_tokenizer"],
    ["convert", "--src", "{tmp}/no_checkpoint", "--dst", "{tmp}/out"],
    ["eval", "--config", "configs/omni_emotion.py:tiny", "--checkpoint", "{tmp}/nothing", "--workdir", "{tmp}/w"],
    ["infer", "--checkpoint", "{tmp}/m.jsonl", "--video", "{tmp}/no_clip.mp4"],
    ["train", "--config", "configs/omni_emotion.py:tiny", "--workdir", "{tmp}/w", "--init", "{tmp}/no_checkpoint"],
])
def test_a_missing_input_path_is_one_line_naming_it(tmp_path, capsys, argv):
    (tmp_path / "m.jsonl").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    missing = next(a for a in argv if "no_" in a or "nothing" in a)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"{missing}: no such file or directory")
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
