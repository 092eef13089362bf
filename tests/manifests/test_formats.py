"""`omni-jax manifest`'s readers: each public layout written small in tmp_path, read into the
exact lines the rest of the project reads (empty media files stand for the clips)."""
import json

import pytest

from omni_jax.config_flags import load_config
from omni_jax.configs import omni_emotion
from omni_jax.errors import InputError
from omni_jax.manifests import job
from omni_jax.manifests.vocabulary import Vocabulary

VOCABULARY = Vocabulary.from_evals(omni_emotion.evals_config())


def run(name, labels, media, out, phase="", split="", fold=0, classes=""):
    """The job as `omni-jax manifest --format NAME` runs it, with the manifest config's fields."""
    cfg = load_config("manifest")
    cfg.manifest.update(phase=phase, split=split, fold=fold, classes=str(classes))
    return job.run(cfg, format=name, labels=labels, media=media, out=out)
EVALS = omni_emotion.evals_config()


def write(root, relative, text=""):
    """`text` at root/relative (folders made); media files are written empty."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lines(tmp_path, name, labels, media, **options):
    """(summary, the written lines) of `name`'s manifest at tmp_path/out.jsonl."""
    out = tmp_path / "out.jsonl"
    summary = run(name, labels, media, out, **options)
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def human(question, marker="<video>"):
    return {"from": "human", "value": f"{marker}\n{question}"}


def test_the_project_names_each_dataset_word_only_where_it_is_the_same_word():
    words = {"Happiness": "happy", "anger": "angry", "sadness": "sad", "fearful": "fear", "surprised": "surprise",
             "contempt": "contemptuous", "anxiety": "anxious", "helplessness": "helpless",
             "disappointment": "disappointed", "neutral": "neutral",
             "calm": "calm", "worried": "worried", "joy": "joy"}  # synonyms, but other words: kept
    assert {word: VOCABULARY.class_name(word) for word in words} == words
    assert VOCABULARY.classify.format(options="a, b") == EVALS.dfew.question.replace(
        ", ".join(EVALS.dfew.classes), "a, b")


def test_dfew_fold_csv(tmp_path):
    write(tmp_path, "EmoLabel_DataSplit/test(single-labeled)/set_2.csv", "video_name,label\n1,1\n12,7\n13,4\n")
    write(tmp_path, "data/00001.mp4"), write(tmp_path, "data/00012.avi")
    summary, written = lines(tmp_path, "dfew", tmp_path / "EmoLabel_DataSplit", tmp_path / "data",
                             split="test", fold=2)
    assert written == [{"id": "00001", "video": "data/00001.mp4", "source": "dfew", "label": "happy"},
                       {"id": "00012", "video": "data/00012.avi", "source": "dfew", "label": "fear"}]
    assert summary["skipped"] == {"missing_media": 1} and summary["labels"] == {"fear": 1, "happy": 1}
    assert summary["first_skipped"][0].endswith("set_2.csv:4: 00013: no 00013 or 13 under " + str(tmp_path / "data"))


def test_dfew_face_alignment_asks_the_evaluators_question(tmp_path):
    write(tmp_path, "splits/set_1/train.csv", "video_name,label\n7,2\n")  # the other layout of the folds
    write(tmp_path, "data/00007.mp4")
    _, written = lines(tmp_path, "dfew", tmp_path / "splits", tmp_path / "data", phase="face_alignment",
                       split="train", fold=1)
    assert written == [{"id": "00007", "video": "data/00007.mp4", "source": "dfew",
                        "conversations": [human(EVALS.dfew.question), {"from": "gpt", "value": "sad"}]}]


# MAFW's lists as they ship (the public loaders' copies: MAE-DFER, HiCMAE, EmoCLIP, S2D): CRLF
# lines; `no_caption` ASCII `CLIP LABEL`; `with_caption` GBK, tab-separated clip, label, Chinese
# and English captions. Clip 00025 is anger in every copy.
ZH, EN = "一个男人大声讲话。紧皱眉头。", "A man talks loudly. The tight frown."


def test_mafw_set_lists_as_they_ship(tmp_path):
    set_list = "Train_Test_Set/single/no_caption_new/set_3/test.txt"  # a widely used copy's layout
    write(tmp_path, set_list, "00025.mp4 anger\r\n\r\n00031.mp4 contempt\r\n")
    for clip in ("00025.mp4", "00031.mp4", "03352.mp4"):
        write(tmp_path, f"clips/{clip}")
    summary, written = lines(tmp_path, "mafw", tmp_path, tmp_path / "clips", split="test", fold=3)
    assert written == [{"id": "00025", "video": "clips/00025.mp4", "source": "mafw", "label": "angry"},
                       {"id": "00031", "video": "clips/00031.mp4", "source": "mafw", "label": "contemptuous"}]
    assert summary["labels_encoding"] == "UTF-8"
    for encoding, name in (("gbk", "GBK"), ("utf-8", "UTF-8")):
        captioned = tmp_path / f"Train & Test Set/single/with_caption/set_1/train-{encoding}.txt"
        captioned.parent.mkdir(parents=True, exist_ok=True)
        captioned.write_bytes(f"00025.mp4\tanger\t{ZH}\t{EN}\r\n00031.mp4\tcontempt\r\n".encode(encoding))
        (tmp_path / "out.jsonl").unlink()
        summary, written = lines(tmp_path, "mafw", captioned, tmp_path / "clips")
        assert summary["labels_encoding"] == name
        assert written[0] == {"id": "00025", "video": "clips/00025.mp4", "source": "mafw", "label": "angry",
                              "description": EN, "caption_zh": ZH}
        assert written[1] == {"id": "00031", "video": "clips/00031.mp4", "source": "mafw", "label": "contemptuous"}
    # MAFW's README writes its caption list's clip and label apart with spaces and &emsp;
    readme_form = write(tmp_path, "single_label.txt", f"03352.mp4  &emsp;&emsp;happiness\t{ZH}\t{EN}\n")
    (tmp_path / "out.jsonl").unlink()
    _, written = lines(tmp_path, "mafw", readme_form, tmp_path / "clips", phase="face_alignment")
    assert written[0]["id"] == "03352"
    assert written[0]["conversations"] == [human(EVALS.mafw.question), {"from": "gpt", "value": "happy"}]


def test_a_mafw_list_in_neither_encoding_or_with_three_fields_is_named(tmp_path):
    write(tmp_path, "clips/00025.mp4")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"00025.mp4\tanger\t\xff\xfe\xff\n")
    with pytest.raises(InputError, match="latin.txt: not UTF-8 or GBK text"):
        run("mafw", latin, tmp_path / "clips", tmp_path / "out.jsonl")
    three = write(tmp_path, "three.txt", f"00025.mp4\tanger\t{EN}\n")
    with pytest.raises(InputError, match="three.txt:1: expected CLIP LABEL, or tab-separated CLIP LABEL CHINESE "
                                         "ENGLISH, found 3 fields"):
        run("mafw", three, tmp_path / "clips", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_ferv39k_setup_list(tmp_path):
    write(tmp_path, "FERV39k/4_setups/All_scenes/test_All.csv", "Action/Sad/0010 Sad\nTalkshow/Happy/0003 Happy\n")
    write(tmp_path, "faces/Action/Sad/0010.mp4"), write(tmp_path, "faces/Talkshow/Happy/0003.mkv")
    _, written = lines(tmp_path, "ferv39k", tmp_path / "FERV39k", tmp_path / "faces", phase="eval", split="test")
    assert written == [
        {"id": "Action/Sad/0010", "video": "faces/Action/Sad/0010.mp4", "source": "ferv39k", "label": "sad",
         "scene": "Action"},
        {"id": "Talkshow/Happy/0003", "video": "faces/Talkshow/Happy/0003.mkv", "source": "ferv39k",
         "label": "happy", "scene": "Talkshow"}]


def test_mer2023_and_mer2024_label_csvs(tmp_path):
    write(tmp_path, "mer2023/train-label.csv", "name,discrete,valence\nsample_00000003,worried,-1.5\n")
    write(tmp_path, "mer2023/test3-label.csv", "name,discrete\nsample_00000007,happy\n")
    write(tmp_path, "mer2024/label-disdim.csv", "name,discrete,valence\nsample_00000009,surprise,2\n")
    for name in ("sample_00000003.mp4", "sample_00000007.avi", "sample_00000009.mp4"):
        write(tmp_path, f"video/{name}")
    summary, written = lines(tmp_path, "mer2023", tmp_path / "mer2023", tmp_path / "video", split="train")
    options = "happy, surprise, neutral, angry, sad, worried"  # the project's classes, then MER's own word
    assert summary["phase"] == "face_alignment"
    assert written == [{"id": "sample_00000003", "video": "video/sample_00000003.mp4", "source": "mer2023",
                        "valence": -1.5,
                        "conversations": [human(VOCABULARY.classify.format(options=options)),
                                          {"from": "gpt", "value": "worried"}]}]
    (tmp_path / "out.jsonl").unlink()
    _, written = lines(tmp_path, "mer2023", tmp_path / "mer2023", tmp_path / "video", phase="eval", split="test3")
    assert written == [{"id": "sample_00000007", "video": "video/sample_00000007.avi", "source": "mer2023",
                        "label": "happy"}]
    (tmp_path / "out.jsonl").unlink()
    _, written = lines(tmp_path, "mer2024", tmp_path / "mer2024", tmp_path / "video", phase="eval")
    assert written == [{"id": "sample_00000009", "video": "video/sample_00000009.mp4", "source": "mer2024",
                        "label": "surprise", "valence": 2.0}]


def test_caer_class_folders(tmp_path):
    write(tmp_path, "CAER/train/Anger/0001.avi"), write(tmp_path, "CAER/train/Happy/0002.avi")
    write(tmp_path, "CAER/test/Sad/0001.avi")
    _, written = lines(tmp_path, "caer", tmp_path / "CAER", tmp_path / "CAER", phase="eval", split="train")
    assert written == [{"id": "train/Anger/0001", "video": "CAER/train/Anger/0001.avi", "source": "caer",
                        "label": "angry"},
                       {"id": "train/Happy/0002", "video": "CAER/train/Happy/0002.avi", "source": "caer",
                        "label": "happy"}]


def test_afew_va_per_frame_valence_and_arousal(tmp_path):
    frames = {"00001": {"valence": 2, "arousal": -1, "landmarks": [[0, 0]]},
              "00000": {"valence": 3, "arousal": 0.5, "landmarks": [[0, 0]]}}
    write(tmp_path, "AFEW-VA/001/001.json", json.dumps({"actor": "Someone", "frames": frames, "video_id": "001"}))
    write(tmp_path, "videos/001.mp4")  # the frames encoded into a video
    summary, written = lines(tmp_path, "afew_va", tmp_path / "AFEW-VA", tmp_path / "videos")
    assert written == [{"id": "001", "video": "videos/001.mp4", "source": "afew_va", "valence": [3, 2],
                        "arousal": [0.5, -1], "actor": "Someone"}]
    assert summary["labels"] == {}


def test_ravdess_file_names(tmp_path):
    names = ("Actor_01/01-01-06-01-02-01-01.mp4", "Actor_01/03-01-02-02-01-02-01.wav",
             "Actor_02/02-02-08-01-01-01-02.mp4")
    for name in names:
        write(tmp_path, f"RAVDESS/{name}")
    write(tmp_path, "RAVDESS/README.txt")  # not a RAVDESS name: not a clip
    _, written = lines(tmp_path, "ravdess", tmp_path / "RAVDESS", tmp_path / "RAVDESS", phase="eval")
    assert written == [
        {"id": "01-01-06-01-02-01-01", "video": f"RAVDESS/{names[0]}", "source": "ravdess", "label": "fear",
         "modality": "full-av", "vocal_channel": "speech", "intensity": "normal",
         "statement": "Dogs are sitting by the door", "repetition": 1, "actor": 1},
        {"id": "03-01-02-02-01-02-01", "audio": f"RAVDESS/{names[1]}", "source": "ravdess", "label": "calm",
         "modality": "audio-only", "vocal_channel": "speech", "intensity": "strong",
         "statement": "Kids are talking by the door", "repetition": 2, "actor": 1},
        {"id": "02-02-08-01-01-01-02", "video": f"RAVDESS/{names[2]}", "source": "ravdess", "label": "surprise",
         "modality": "video-only", "vocal_channel": "song", "intensity": "normal",
         "statement": "Kids are talking by the door", "repetition": 1, "actor": 2}]
    (tmp_path / "out.jsonl").unlink()
    summary, written = lines(tmp_path, "ravdess", tmp_path / "RAVDESS", tmp_path / "RAVDESS", phase="audio_alignment")
    assert [(line["id"], line["audio"], line["conversations"][1]["value"]) for line in written] == [
        ("01-01-06-01-02-01-01", f"RAVDESS/{names[0]}", "Dogs are sitting by the door"),
        ("03-01-02-02-01-02-01", f"RAVDESS/{names[1]}", "Kids are talking by the door")]
    assert written[0]["conversations"][0] == human("Transcribe what is said.", "<audio>")
    assert summary["skipped"] == {"no_audio": 1}  # the video-only file
    (tmp_path / "out.jsonl").unlink()
    summary, written = lines(tmp_path, "ravdess", tmp_path / "RAVDESS", tmp_path / "RAVDESS")
    assert [line["conversations"][1]["value"] for line in written] == ["fear", "surprise"]
    assert summary["skipped"] == {"no_video": 1}  # the audio-only file
    assert written[0]["conversations"][0] == human(VOCABULARY.classify.format(
        options="happy, surprise, neutral, angry, disgust, sad, fear, calm"))


def test_emer_descriptions_and_open_vocabulary_labels(tmp_path):
    write(tmp_path, "emer/final-EMER-reason.csv",
          'names,chinese,english\nsample_1,她笑了,"She smiles, her voice rises."\nsample_2,他哭了,He cries.\n')
    write(tmp_path, "emer/track2_train_ovmerd.csv", "name,openset\nsample_1,\"['happy', 'relieved']\"\n")
    write(tmp_path, "video/sample_1.mp4"), write(tmp_path, "video/sample_2.mp4")
    _, written = lines(tmp_path, "emer", tmp_path / "emer", tmp_path / "video", phase="eval")
    assert written == [{"id": "sample_1", "video": "video/sample_1.mp4", "source": "emer",
                        "labels": ["happy", "relieved"], "description": "She smiles, her voice rises."},
                       {"id": "sample_2", "video": "video/sample_2.mp4", "source": "emer", "description": "He cries."}]
    (tmp_path / "out.jsonl").unlink()
    _, written = lines(tmp_path, "emer", tmp_path / "emer", tmp_path / "video")
    clip = {"video": "video/sample_1.mp4", "source": "emer"}
    assert written[:2] == [
        {"id": "sample_1:describe", **clip, "conversations": [
            human(EVALS.emer.question), {"from": "gpt", "value": "She smiles, her voice rises."}]},
        {"id": "sample_1:open_vocabulary", **clip, "conversations": [
            human(EVALS.emer_ov.question), {"from": "gpt", "value": "happy, relieved"}]}]
    assert [line["id"] for line in written] == ["sample_1:describe", "sample_1:open_vocabulary", "sample_2:describe"]


def test_commonvoice_tsv(tmp_path):
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    write(tmp_path, "cv/en/train.tsv", header + 'c0ffee\tcommon_voice_en_1.mp3\tHe said "hi".\t2\t0\ttwenties\t'
                                                "male\t\ten\t\n")
    write(tmp_path, "cv/en/clips/common_voice_en_1.mp3")
    summary, written = lines(tmp_path, "commonvoice", tmp_path / "cv/en", tmp_path / "cv/en", split="train")
    assert written == [{"id": "common_voice_en_1", "audio": "cv/en/clips/common_voice_en_1.mp3",
                        "source": "commonvoice", "client_id": "c0ffee", "up_votes": "2", "down_votes": "0",
                        "age": "twenties", "gender": "male", "locale": "en",
                        "conversations": [human("Transcribe what is said.", "<audio>"),
                                          {"from": "gpt", "value": 'He said "hi".'}]}]
    assert summary["phase"] == "audio_alignment"


def test_wavcaps_json(tmp_path):
    data = {"num_captions_per_audio": 1, "data": [
        {"id": "Yb0RFKhbpFJA.wav", "caption": "A dog barks twice.", "audio": "wav_path", "duration": 10.0},
        {"id": 180913, "caption": "Rain on a tin roof.", "wav_path": "FreeSound/180913.flac", "duration": 4.5}]}
    write(tmp_path, "json_files/AudioSet_SL/as_final.json", json.dumps(data))
    write(tmp_path, "audio/Yb0RFKhbpFJA.flac"), write(tmp_path, "audio/FreeSound/180913.flac")
    _, written = lines(tmp_path, "wavcaps", tmp_path / "json_files/AudioSet_SL/as_final.json", tmp_path / "audio")
    question = human("Describe the sound.", "<audio>")
    assert written == [
        {"id": "Yb0RFKhbpFJA.wav", "audio": "audio/Yb0RFKhbpFJA.flac", "source": "wavcaps", "duration": 10.0,
         "conversations": [question, {"from": "gpt", "value": "A dog barks twice."}]},
        {"id": "180913", "audio": "audio/FreeSound/180913.flac", "source": "wavcaps", "duration": 4.5,
         "conversations": [question, {"from": "gpt", "value": "Rain on a tin roof."}]}]


def test_media_outside_the_manifests_folder_is_written_absolute(tmp_path):
    write(tmp_path, "labels/set.csv", "video_name,label\n3,6\n")
    media = write(tmp_path, "media/00003.mp4").parent
    out = tmp_path / "manifests" / "dfew.jsonl"
    run("dfew", tmp_path / "labels/set.csv", media, out)
    assert json.loads(out.read_text())["video"] == str(media / "00003.mp4")


@pytest.mark.parametrize("name, text, message", [
    ("dfew", "video_name,label\n1,1\nclip_2,3\n",
     "set.csv:3: 'video_name' is a clip number (1, 2, ...), found 'clip_2'"),
    ("dfew", "video_name,label\n1,1\n2\n", "set.csv:3: expected 2 fields ['video_name', 'label'], found 1"),
    ("dfew", "video_name,label\n1,9\n", "set.csv:2: class '9' is not in dfew's table (expected one of ['1', '2',"),
    ("dfew", "clip,label\n1,1\n", "set.csv:1: the header has no ['video_name'] column"),
    ("mafw", "00025.mp4 happiness\n00026.mp4 happiness sadness\n",
     "set.csv:2: expected 2 fields separated by spaces (CLIP LABEL), found 3"),
    ("mer2023", "name,discrete,valence\ns1,happy,high\n", "set.csv:2: 'valence' is a number, found 'high'"),
    ("commonvoice", "client_id\tpath\tsentence\nc\tclip.mp3\t\n", "set.csv:2: 'sentence' is empty"),
])
def test_a_malformed_row_is_an_error_naming_its_line(tmp_path, name, text, message):
    labels = write(tmp_path, "set.csv", text)
    write(tmp_path, "media/00001.mp4"), write(tmp_path, "media/00025.mp4")
    with pytest.raises(InputError) as error:
        run(name, labels, tmp_path / "media", tmp_path / "out.jsonl")
    assert message in str(error.value) and str(labels) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "set.csv"]  # nothing half-written


@pytest.mark.parametrize("name, relative, text, message", [
    ("afew_va", "001/001.json", '{"frames": {"00000": {"valence": "high", "arousal": 1}}}',
     "001.json: frames.00000.valence is a number, found 'high'"),
    ("afew_va", "001/001.json", '{"frames": [1, 2', "001.json:1: not JSON"),
    ("ravdess", "Actor_01/01-01-09-01-01-01-01.mp4", "", "01-01-09-01-01-01-01.mp4: class '09' is not in ravdess's"),
    ("ravdess", "Actor_01/04-01-01-01-01-01-01.mp4", "", "the modality code is one of ['01', '02', '03'], found '04'"),
    ("wavcaps", "w.json", '{"data": [{"id": "a", "caption": ""}]}', "w.json: data[0]: expected an object with 'id'"),
    ("emer", "e.csv", "name,chinese\na,b\n", "e.csv:1: expected a name/names column and a description"),
])
def test_a_malformed_annotation_file_is_an_error_naming_it(tmp_path, name, relative, text, message):
    write(tmp_path, f"labels/{relative}", text)
    labels = tmp_path / "labels" / ("" if name in ("afew_va", "ravdess") else relative)
    with pytest.raises(InputError) as error:
        run(name, labels, tmp_path / "labels", tmp_path / "out.jsonl")
    assert message in str(error.value)
    assert not (tmp_path / "out.jsonl").exists()
