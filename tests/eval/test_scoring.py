"""The paper's metrics against independent references: scikit-learn for UAR/WAR and HumanOmni's
strict figures, hand-worked cases for answer mapping and EMER-OV."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, recall_score

from omni_jax.configs.omni_emotion import DFEW_CLASSES, MAFW_CLASSES, SYNONYMS
from omni_jax.eval import scoring

UNMAPPED = "<unmapped>"


@pytest.mark.parametrize("answer,expected", [
    ("Happy.", "happy"), ("  the emotion is ANGRY! ", "angry"), ("joyful", "happy"), ("She is surprised", "surprise"),
    ("no emotion", "neutral"), ("Sadness", "sad"), ("happy or sad", None), ("I don't know.", None), ("", None),
    ("unhappy", "sad"),  # a synonym of sad; "happy" inside it is no whole word
    ("contempt", None),  # not a DFEW class
])
def test_answers_map_to_one_class_or_none(answer, expected):
    assert scoring.map_answer(answer, DFEW_CLASSES, SYNONYMS) == expected


def test_mafw_answers_and_exact_match_before_containment():
    assert scoring.map_answer("Contempt.", MAFW_CLASSES, SYNONYMS) == "contemptuous"
    assert scoring.map_answer("anxious", MAFW_CLASSES, SYNONYMS) == "anxious"
    assert scoring.map_answer("disappointed and sad", MAFW_CLASSES, SYNONYMS) is None


def test_uar_war_equal_scikit_learn_with_unmapped_answers_wrong():
    rng = np.random.RandomState(0)
    labels = list(rng.choice(DFEW_CLASSES[:6], 200))  # "fear" has no reference: not in the UAR
    words = list(DFEW_CLASSES) + ["Happy!", "sadness", "happy or sad", "no idea", "contempt"]
    answers = list(rng.choice(words, 200))
    scores = scoring.classification_scores(answers, labels, DFEW_CLASSES, SYNONYMS)
    mapped = [scoring.map_answer(a, DFEW_CLASSES, SYNONYMS) or UNMAPPED for a in answers]
    assert scores["war"] == pytest.approx(accuracy_score(labels, mapped))
    assert scores["uar"] == pytest.approx(recall_score(labels, mapped, labels=sorted(set(labels)), average="macro",
                                                       zero_division=0))
    assert scores["unmapped"] == mapped.count(UNMAPPED) > 0
    assert scores["recall"]["fear"] is None
    # HumanOmni's figures: the strings as they are, macro recall over true ∪ predicted strings
    assert scores["strict_war"] == pytest.approx(accuracy_score(labels, [a.strip() for a in answers]))
    assert scores["strict_uar"] == pytest.approx(recall_score(labels, [a.strip() for a in answers],
                                                              average="macro", zero_division=0))
    matrix = scores["confusion"]
    assert matrix.sum() == 200 and matrix[:, -1].sum() == scores["unmapped"]
    assert np.trace(matrix[:, :-1]) == round(scores["war"] * 200)


def test_a_reference_outside_the_class_list_is_an_error():
    with pytest.raises(ValueError, match="'calm'.*not in the class list"):
        scoring.classification_scores(["happy"], ["calm"], DFEW_CLASSES)


def test_emotion_words_from_lists_and_free_text():
    table = scoring.word_groups()
    assert scoring.emotion_words("Happy, happy; JOYFUL and a bit worried", table) == ["happy", "joyful", "worried"]
    assert scoring.emotion_words("She looks calm but slightly anxious.", table) == ["calm", "anxious"]
    assert scoring.emotion_words(["serene", "melancholic"], table) == ["serene", "melancholic"]  # unknown kept
    assert scoring.emotion_words("", table) == []


def test_open_vocabulary_scores_by_hand():
    # clip 1: P = {happiness, fear}, G = {happiness}: precision 1/2, recall 1
    # clip 2: empty answer: 0, 0
    # clip 3: P = {sadness (unhappy, disappointed), "melancholic"}, G = {sadness, anger}: 1/2, 1/2
    # clip 4: duplicates and synonyms collapse: P = {anger}, G = {anger}: 1, 1
    answers = ["joyful, worried", "", "unhappy, disappointed, melancholic", "angry, furious, Angry"]
    references = [["happy"], ["sad"], ["sad", "irritated"], ["mad"]]
    scores = scoring.open_vocabulary_scores(answers, references)
    assert scores["precision"] == pytest.approx((0.5 + 0 + 0.5 + 1) / 4)
    assert scores["recall"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert scores["avg"] == pytest.approx((scores["precision"] + scores["recall"]) / 2)


def test_a_custom_grouping_decides_per_clip():
    # an LLM-style grouping that merges everything of a clip into one group
    one_group = lambda true, predicted: {w: "all" for w in true + predicted}
    scores = scoring.open_vocabulary_scores(["worried"], [["happy"]], group_of=one_group)
    assert (scores["precision"], scores["recall"]) == (1.0, 1.0)


def test_the_word_table_puts_each_word_in_one_group():
    table = scoring.word_groups()
    assert table["disappointed"] == table["sad"] == "sadness" and table["anxious"] == "fear"
    with pytest.raises(ValueError, match="'glad' is in groups"):
        scoring.word_groups({"happiness": ("glad",), "relief": ("glad",)})
