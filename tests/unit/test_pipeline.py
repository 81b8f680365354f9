"""Pipelines without a gateway: the PIPELINE check, and runs against a fake ``call``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from basic_inference_server.errors import BadRequest, StepFailed
from basic_inference_server.traffic.pipeline import (
    MAX_DEPTH,
    MAX_PATH,
    MAX_STEPS,
    failure_status,
    parse_pipeline,
    run_pipeline,
    validate_pipeline,
)

TWO_STEPS = {"STEPS": [{"ID": "embed", "SIGNATURE": "embedding",
                        "INPUT": {"TEXT": "$input.TEXT"}},
                       {"ID": "rank", "SIGNATURE": "ranker@v2",
                        "INPUT": {"VECTOR": "$steps.embed.EMBEDDING", "TOP": 2}}],
             "OUTPUT": {"BEST": "$steps.rank.ORDER.0", "DIM": "$steps.embed.DIM",
                        "PRICE": "$$5"}}


def step(step_id: str, signature: str = "echo", input_: Any = "$input") -> dict[str, Any]:
    return {"ID": step_id, "SIGNATURE": signature, "INPUT": input_}


class FakeCall:
    """Answers each endpoint with a function of its body; records calls in order."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, signature: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls.append((signature, body))
        answer = self.answers[signature]
        result = answer(body) if callable(answer) else answer
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[no-any-return]


def run(spec: dict[str, Any], body: dict[str, Any], call: Any) -> Any:
    return asyncio.run(asyncio.wait_for(run_pipeline(spec, body, call), 10))


# -- validation --------------------------------------------------------------------------
def test_valid_pipelines() -> None:
    assert validate_pipeline(None) is None
    assert validate_pipeline(TWO_STEPS) is None
    assert validate_pipeline({"STEPS": [step("only")]}) is None
    assert validate_pipeline({"STEPS": [step("a", input_="$steps.b"), step("b")],
                              "OUTPUT": "$steps.a"}) is None


@pytest.mark.parametrize(("value", "problem"), [
    ([], "must be an object"),
    ({"STEPS": []}, "1 to"),
    ({"STEPS": [step("a")], "OUPUT": {}}, "unknown key(s) 'OUPUT'"),
    ({"STEPS": [{"ID": "a"}]}, "STEPS[0].SIGNATURE must be"),
    ({"STEPS": [step("a", "bad name")]}, "SIGNATURE must be"),
    ({"STEPS": [step("a", "x@")]}, "SIGNATURE must be"),
    ({"STEPS": [step("a", "x@v1@v2")]}, "SIGNATURE must be"),
    ({"STEPS": [step("1a")]}, "STEPS[0].ID must be"),
    ({"STEPS": [step("a.b")]}, "STEPS[0].ID must be"),
    ({"STEPS": [{**step("a"), "RETRIES": 2}]}, "unknown key(s) 'RETRIES'"),
    ({"STEPS": [step("a"), step("a")]}, "step ID 'a' is used twice"),
    ({"STEPS": [step("a", input_={"X": "$steps.nope.Y"})]}, "'$steps.nope.Y' names no step"),
    ({"STEPS": [step("a")], "OUTPUT": {"X": "$steps.b"}}, "OUTPUT: '$steps.b' names no step"),
    ({"STEPS": [step("a", input_={"X": "$steps.a.Y"})]}, "steps a wait on each other"),
    ({"STEPS": [step("a", input_="$steps.c"), step("b", input_="$steps.a"),
                step("c", input_="$steps.b"), step("d")]}, "steps a, b, c wait on each other"),
    ({"STEPS": [step("a", input_={"X": "$inputs.Y"})]}, "is not a reference"),
    ({"STEPS": [step("a", input_={"X": "$steps"})]}, "is not a reference"),
    ({"STEPS": [step("a", input_={"X": "$input..Y"})]}, "empty path segment"),
    ({"STEPS": [step("a", input_={"X": "$input." + ".".join(["k"] * (MAX_PATH + 1))})]},
     f"more than {MAX_PATH} path segments"),
    ({"STEPS": [step("a", input_=[1, 2])]}, "STEPS[0].INPUT must be an object or a reference"),
    ({"STEPS": [step("a", input_={"SIGNATURE": "other"})]}, "may not set SIGNATURE"),
    ({"STEPS": [step("a", input_={"ASYNC": True})]}, "may not set ASYNC"),
    ({"STEPS": [step("a")], "OUTPUT": "text"}, "OUTPUT must be an object or a reference"),
    ({"STEPS": [step(f"s{i}") for i in range(MAX_STEPS + 1)]}, f"1 to {MAX_STEPS} steps"),
])
def test_invalid_pipelines_say_what_is_wrong(value: Any, problem: str) -> None:
    message = validate_pipeline(value)
    assert message is not None and problem in message, message


def test_template_bounds() -> None:
    deep: Any = "$input"
    for _ in range(MAX_DEPTH + 1):
        deep = {"X": deep}
    assert f"deeper than {MAX_DEPTH}" in str(validate_pipeline({"STEPS": [step("a", input_=deep)]}))
    wide = {"STEPS": [step("a", input_={"L": list(range(5000))})]}
    assert "more than 4096 values" in str(validate_pipeline(wide))


def test_dependencies_come_from_references() -> None:
    pipeline = parse_pipeline({"STEPS": [
        step("a"), step("b", input_={"X": ["$steps.a.Y", {"Z": "$steps.c"}]}), step("c")]})
    assert [s.needs for s in pipeline.steps] == [frozenset(), frozenset({"a", "c"}), frozenset()]


# -- running -----------------------------------------------------------------------------
def test_two_steps_chain_and_output_template() -> None:
    call = FakeCall({
        "embedding": lambda b: (200, {"EMBEDDING": [len(b["TEXT"]), 1.0], "DIM": 2}),
        "ranker@v2": lambda b: (200, {"ORDER": [b["VECTOR"][0] * 10, 0], "ver": "x"}),
    })
    result = run(TWO_STEPS, {"SIGNATURE": "pipe", "ASYNC": False, "TEXT": "hello"}, call)
    assert call.calls == [("embedding", {"TEXT": "hello"}),
                          ("ranker@v2", {"VECTOR": [5, 1.0], "TOP": 2})]
    answer = result.answer()
    assert {k: answer[k] for k in ("BEST", "DIM", "PRICE")} == {"BEST": 50, "DIM": 2,
                                                               "PRICE": "$5"}
    steps = answer["PIPELINE"]["STEPS"]
    assert [(s["ID"], s["SIGNATURE"], s["STATUS"]) for s in steps] == [
        ("embed", "embedding", 200), ("rank", "ranker@v2", 200)]
    assert steps[1]["STARTED_MS"] >= steps[0]["STARTED_MS"] + steps[0]["ELAPSED_MS"]
    assert answer["PIPELINE"]["ELAPSED_MS"] >= steps[1]["STARTED_MS"]


def test_default_output_is_the_last_steps_answer_and_input_is_the_request() -> None:
    call = FakeCall({"echo": lambda b: (200, {"GOT": b})})
    result = run({"STEPS": [step("only")]}, {"SIGNATURE": "p", "A": [1, {"B": 2}]}, call)
    assert result.output == {"GOT": {"A": [1, {"B": 2}]}}


def test_independent_steps_run_at_the_same_time() -> None:
    """Each of a and b waits until the other has started: only a parallel run finishes."""
    events: dict[str, asyncio.Event] = {}

    async def side(name: str, other: str) -> tuple[int, dict[str, Any]]:
        events.setdefault(name, asyncio.Event()).set()
        await events.setdefault(other, asyncio.Event()).wait()
        return 200, {"V": name}

    call = FakeCall({"ea": lambda b: side("a", "b"), "eb": lambda b: side("b", "a"),
                     "join": lambda b: (200, b)})
    spec = {"STEPS": [step("a", "ea"), step("b", "eb"),
                      step("j", "join", {"A": "$steps.a.V", "B": "$steps.b.V"})]}
    result = run(spec, {}, call)
    assert result.output == {"A": "a", "B": "b"}
    assert [c[0] for c in call.calls] == ["ea", "eb", "join"]


def test_a_step_waits_for_every_step_it_references() -> None:
    order: list[str] = []

    async def slow(name: str, ev: asyncio.Event) -> tuple[int, dict[str, Any]]:
        await ev.wait()
        order.append(name)
        return 200, {"N": name}

    async def main() -> Any:
        release = asyncio.Event()

        async def fast(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            order.append("fast")
            release.set()  # the slow step finishes only after the fast one has answered
            return 200, {"N": "fast"}

        call = FakeCall({"slow": lambda b: slow("slow", release), "fast": fast,
                         "both": lambda b: (200, b)})
        spec = {"STEPS": [step("s", "slow"), step("f", "fast"),
                          step("j", "both", {"X": ["$steps.s.N", "$steps.f.N"]})]}
        return await run_pipeline(spec, {}, call)

    result = asyncio.run(asyncio.wait_for(main(), 10))
    assert order == ["fast", "slow"]
    assert result.output == {"X": ["slow", "fast"]}


def test_a_failing_step_is_named_and_stops_the_rest() -> None:
    async def main() -> StepFailed:
        hung_cancelled = asyncio.Event()

        async def hang(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                hung_cancelled.set()
                raise
            return 200, {}

        call = FakeCall({"ok": lambda b: (200, {"V": 1}), "hang": hang,
                         "bad": lambda b: (500, {"ERROR": "model exploded",
                                                 "ERROR_TYPE": "internal_error"}),
                         "never": lambda b: (200, {})})
        spec = {"STEPS": [step("first", "ok"), step("second", "bad", {"V": "$steps.first.V"}),
                          step("side", "hang"), step("third", "never", "$steps.second")]}
        with pytest.raises(StepFailed) as info:
            await run_pipeline(spec, {}, call)
        assert hung_cancelled.is_set()
        assert "never" not in [c[0] for c in call.calls]
        return info.value

    err = asyncio.run(asyncio.wait_for(main(), 10))
    assert err.status == 502
    body = err.to_dict()
    assert body["ERROR_TYPE"] == "step_failed"
    assert "'second'" in body["ERROR"] and "bad" in body["ERROR"]
    assert "model exploded" in body["ERROR"]
    assert body["STEP"] == {"ID": "second", "SIGNATURE": "bad", "STATUS": 500,
                            "ERROR_TYPE": "internal_error", "ERROR": "model exploded"}
    assert [s["ID"] for s in body["STEPS"]] == ["first", "second"]


@pytest.mark.parametrize(("step_status", "status", "retry_after"), [
    (400, 400, None), (413, 413, None), (422, 502, None), (429, 429, 1), (503, 503, 1),
    (504, 504, None), (500, 502, None), (404, 502, None), (401, 502, None), (409, 502, None),
    (201, 502, None),
])
def test_failure_status_mapping(step_status: int, status: int, retry_after: Any) -> None:
    assert failure_status(step_status) == status
    call = FakeCall({"x": lambda b: (step_status, {"ERROR": "no", "ERROR_TYPE": "k"})})
    with pytest.raises(StepFailed) as info:
        run({"STEPS": [step("s", "x")]}, {}, call)
    assert info.value.status == status
    assert info.value.retry_after == retry_after


def test_a_missing_field_names_the_step_and_whose_fault_it_is() -> None:
    call = FakeCall({"embedding": lambda b: (200, {"OTHER": 1}), "ranker@v2": (200, {})})
    with pytest.raises(BadRequest) as bad:
        run(TWO_STEPS, {"WRONG": "x"}, call)
    assert "'embed'" in bad.value.message and "has no TEXT" in bad.value.message
    assert bad.value.details["STEP"] == {"ID": "embed", "SIGNATURE": "embedding"}
    with pytest.raises(StepFailed) as failed:
        run(TWO_STEPS, {"TEXT": "x"}, call)
    assert failed.value.status == 502
    assert "'rank'" in failed.value.message
    assert "step 'embed' answered without EMBEDDING" in failed.value.message
    assert failed.value.details["STEP"]["ID"] == "rank"


def test_list_indexes_and_missing_output_fields() -> None:
    call = FakeCall({"e": (200, {"L": [{"X": 1}, {"X": 2}]})})
    spec = {"STEPS": [step("s", "e")], "OUTPUT": {"A": "$steps.s.L.1.X", "B": "$input.K.0"}}
    assert run(spec, {"K": ["k"]}, call).output == {"A": 2, "B": "k"}
    with pytest.raises(StepFailed, match="answered without L.5"):
        run({**spec, "OUTPUT": {"A": "$steps.s.L.5"}}, {}, call)
    with pytest.raises(StepFailed, match="OUTPUT"):
        run({**spec, "OUTPUT": "$steps.s.L"}, {}, call)  # a list, not an object
    with pytest.raises(BadRequest, match="request has no K"):
        run(spec, {}, call)


def test_a_call_that_raises_a_serving_error_counts_as_its_answer() -> None:
    async def refuse(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        raise BadRequest("unknown SIGNATURE")

    with pytest.raises(StepFailed) as info:
        run({"STEPS": [step("s", "x")]}, {}, FakeCall({"x": refuse}))
    assert info.value.status == 400 and info.value.details["STEP"]["ERROR_TYPE"] == "bad_request"
