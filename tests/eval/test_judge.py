"""The judge through the official `openai` client against a fake OpenAI-compatible endpoint the
tests start on localhost: scores, retries, the disk cache, garbage replies, timeouts, 429/5xx
storms and truncated bodies counted as one clip's failure, the LLM grouping, and the errors (no
API key, nothing listening, a refused request)."""
import json
import time

import pytest

from omni_jax.endpoints import EndpointUnusable, ReplyRejected
from omni_jax.eval import judge, scoring
from omni_jax.eval.evaluators import OpenVocabulary, ReasoningJudge
from omni_jax.testing.openai_stub import Reply, Request, StubServer

TIMEOUT = 1.0  # seconds a request may take (a "SLOW" prompt takes longer)


def scripted(request: Request) -> Reply:
    """Replies by what the prompt holds: "score=N" → clue N, label 10 − N; "GARBAGE" → prose;
    "FLAKY" → HTTP 500 the first time; "STORM" → 429 or 503 every time; "SLOW" → past the
    timeout; "TRUNCATED" → a body cut short; a grouping prompt → every word in one group."""
    prompt = request.text
    seen = sum(r.text == prompt for r in SERVER.requests)
    if "FLAKY" in prompt and seen == 1:
        return Reply(status=500)
    if "STORM" in prompt:
        return Reply(status=429 if seen % 2 else 503)
    if "GARBAGE" in prompt:
        return Reply("The explanation seems reasonable overall.")
    if prompt.startswith("Group these"):
        words = json.loads(prompt.split("Words: ")[1].split("\n")[0])
        return Reply(json.dumps({w: "one" for w in words}))
    n = int(prompt.split("score=")[1][0])
    return Reply(f"```json\n{{\"clue_overlap\": {n}, \"label_overlap\": {10 - n}}}\n```",
                 delay=TIMEOUT * 1.5 if "SLOW" in prompt else 0.0, truncated="TRUNCATED" in prompt)


SERVER: StubServer


@pytest.fixture
def endpoint(monkeypatch):
    global SERVER
    monkeypatch.setenv("JUDGE_KEY", "secret")
    with StubServer(scripted, api_key="secret") as SERVER:
        yield SERVER


def settings(endpoint, tmp_path, **kwargs):
    return dict(base_url=endpoint.url, model="fake", api_key_env="JUDGE_KEY", cache=str(tmp_path / "cache"),
                retries=2, timeout=TIMEOUT, **kwargs)


def manifest(tmp_path, key, values):
    path = tmp_path / "refs.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", "video": "x.mp4", key: v}) + "\n" for i, v in enumerate(values)))
    return str(path)


def fake_predict(answers, key, values):
    def predict(manifest, question, progress=None):
        return [{"line": i + 1, "id": f"c{i}", "question": question, "answer": a, key: v}
                for i, (a, v) in enumerate(zip(answers, values))]
    return predict


def test_reasoning_scores_retries_cache_and_failures(endpoint, tmp_path):
    descriptions = ["She smiles and laughs: happy.", "A trembling voice: fear.", "Frowning: anger."]
    answers = ["score=8 smiling, happy", "FLAKY score=4 shaky voice", "GARBAGE who knows"]
    evaluator = ReasoningJudge("emer", manifest(tmp_path, "description", descriptions), "Why?",
                               endpoint=settings(endpoint, tmp_path))
    figures = dict(evaluator.run(fake_predict(answers, "description", descriptions), tmp_path / "out"))
    assert figures["clue_overlap"] == pytest.approx((8 + 4) / 2)
    assert figures["label_overlap"] == pytest.approx((2 + 6) / 2)
    assert (figures["judged"], figures["judge_failures"]) == (2, 1)
    assert (figures["judge_requests"], figures["judge_prompt_tokens"]) == (5, 50)  # the 500 was not answered
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions" / "emer.jsonl").read_text().splitlines()]
    assert lines[0]["clue_overlap"] == 8 and "judge_failure" in lines[2] and "clue_overlap" not in lines[2]
    # 1 + 2 (a 500, then the answer) + 3 (garbage, asked again twice)
    assert len(endpoint.requests) == 6
    again = dict(evaluator.run(fake_predict(answers, "description", descriptions), tmp_path / "again"))
    assert {k: v for k, v in again.items() if not k.startswith("judge_")} == {
        k: v for k, v in figures.items() if not k.startswith("judge_")}
    assert len(endpoint.requests) == 6 + 3  # only the unparsable one is asked again: the rest is cached
    assert again["judge_requests"] == 5 + 3


def test_a_request_that_keeps_failing_costs_its_clip_not_the_evaluation(endpoint, tmp_path):
    """One clip's request times out every time, one meets a 429/503 storm, one's reply is cut
    short: the evaluation finishes, those three counted as judge failures, the others scored."""
    answers = ["score=7 fine", "SLOW score=3", "STORM score=2", "TRUNCATED score=1", "score=9 good"]
    descriptions = [f"reference {i}" for i in range(5)]
    evaluator = ReasoningJudge("emer", manifest(tmp_path, "description", descriptions), "Why?",
                               endpoint=settings(endpoint, tmp_path))
    start = time.monotonic()
    figures = dict(evaluator.run(fake_predict(answers, "description", descriptions), tmp_path / "out"))
    assert (figures["judged"], figures["judge_failures"]) == (2, 3)
    assert figures["clue_overlap"] == pytest.approx(8.0)
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions" / "emer.jsonl").read_text().splitlines()]
    failures = {line["id"]: line["judge_failure"] for line in lines if "judge_failure" in line}
    assert set(failures) == {"c1", "c2", "c3"}
    assert "timeout" in failures["c1"] and ("HTTP 503" in failures["c2"] or "HTTP 429" in failures["c2"])
    assert "broke off" in failures["c3"] or "unreadable" in failures["c3"]
    assert sum("SLOW" in r.text for r in endpoint.requests) == 3  # the client's two retries, then given up
    assert time.monotonic() - start < 60


def test_llm_grouping_of_open_vocabulary_words(endpoint, tmp_path):
    labels = [["happy"], ["sad", "angry"]]
    evaluator = OpenVocabulary("ov", manifest(tmp_path, "labels", labels), "Which?", grouping="llm",
                               endpoint=settings(endpoint, tmp_path))
    figures = dict(evaluator.run(fake_predict(["worried", "calm"], "labels", labels), tmp_path / "out"))
    # the fake puts every word of a clip in one group: each clip matches fully
    assert (figures["precision"], figures["recall"]) == (1.0, 1.0)
    table = dict(OpenVocabulary("ov", manifest(tmp_path, "labels", labels), "Which?").run(
        fake_predict(["worried", "calm"], "labels", labels), tmp_path / "table"))
    assert table["precision"] == 0.0 and len(endpoint.requests) == 2
    from omni_jax.config_flags import load_config
    from omni_jax.eval.job import score  # eval's file carries the judge's groups: score gives eval's figures

    assert score(load_config("omni_emotion:tiny"), predictions=tmp_path / "out" / "predictions" / "ov.jsonl")[
        "precision"] == 1.0


def test_endpoint_problems_are_clear_errors(endpoint, tmp_path, monkeypatch):
    refs = manifest(tmp_path, "description", ["happy"])
    with pytest.raises(EndpointUnusable, match="NO_SUCH_KEY is not set"):
        ReasoningJudge("emer", refs, "Why?", endpoint={**settings(endpoint, tmp_path), "api_key_env": "NO_SUCH_KEY"})
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    client = judge.judge_endpoint(settings(endpoint, tmp_path))
    with pytest.raises(EndpointUnusable, match="refused the request: HTTP 401"):
        client.chat([{"role": "user", "content": "score=5"}], judge.parse_reasoning)
    assert len(endpoint.requests) == 1  # a refusal is not retried
    endpoint.close()
    client = judge.judge_endpoint(settings(endpoint, tmp_path))  # a new connection: nothing listens there now
    with pytest.raises(EndpointUnusable, match="cannot be reached"):
        client.chat([{"role": "user", "content": "score=5"}], judge.parse_reasoning)


def test_reply_parsing():
    assert judge.parse_reasoning('Sure! {"clue_overlap": 7, "label_overlap": 9.5}') == {"clue_overlap": 7.0,
                                                                                       "label_overlap": 9.5}
    for bad in ('{"clue_overlap": 11, "label_overlap": 2}', '{"clue_overlap": "high"}', "no json", "{broken"):
        with pytest.raises(ReplyRejected):
            judge.parse_reasoning(bad)
    parse = judge.grouping_parser(["happy", "sad"])
    assert parse('{"Happy": "joy", "sad": "Sadness"}') == {"happy": "joy", "sad": "sadness"}
    with pytest.raises(ReplyRejected, match="leaves out"):
        parse('{"happy": "joy"}')
    assert scoring.open_vocabulary_scores(["x"], [["happy"]], group_of=lambda t, p: {w: "g" for w in t + p})["avg"] == 1
