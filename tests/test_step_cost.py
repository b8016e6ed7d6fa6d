"""The step cost model the scheduler uses to decide whether prompts share a step."""

from __future__ import annotations

import pytest

from lokal.engine.step_cost import StepCost

from test_scheduler import make_scheduler, make_seq, run_plan

CPU = (0.007, 0.0047)  # fixed seconds per step, seconds per token: SmolLM2 on the 2-core test machine
GPU = (0.010, 0.00005)


def learned(fixed: float, per_token: float, sizes=(1, 8, 32, 225)) -> StepCost:
    cost = StepCost()
    for num_tokens in sizes:
        cost.observe(num_tokens, fixed + per_token * num_tokens)
    return cost


def test_nothing_is_known_until_steps_of_far_apart_sizes_were_seen():
    cost = StepCost()
    assert cost.fit() is None and cost.is_worth_sharing(500)
    for _ in range(50):
        cost.observe(8, 0.05)  # decoding only: the fixed and per-token parts cannot be told apart
    cost.observe(12, 0.07)
    assert cost.fit() is None
    cost.observe(0, 0.01)  # a step that computed nothing (a cached prompt's first token) teaches nothing
    assert cost.fit() is None


@pytest.mark.parametrize("fixed, per_token", [CPU, GPU])
def test_the_fit_recovers_the_fixed_and_per_token_parts(fixed, per_token):
    assert learned(fixed, per_token).fit() == pytest.approx((fixed, per_token))


def test_on_a_cpu_a_prompt_waits_for_its_own_step_and_on_a_gpu_it_shares():
    cpu, gpu = learned(*CPU), learned(*GPU)
    assert cpu.is_worth_sharing(1) and not cpu.is_worth_sharing(2) and not cpu.is_worth_sharing(32)
    assert gpu.is_worth_sharing(32) and gpu.is_worth_sharing(200) and not gpu.is_worth_sharing(201)


def test_a_long_run_of_decode_steps_keeps_what_prompt_steps_taught():
    cost = learned(*CPU)
    for _ in range(1000):
        cost.observe(8, CPU[0] + CPU[1] * 8 * 1.1)  # decode steps a little slower (longer contexts)
    fixed, per_token = cost.fit()
    assert per_token == pytest.approx(CPU[1], rel=0.1) and not cost.is_worth_sharing(32)


def test_a_noisy_fit_that_makes_tokens_free_is_not_trusted():
    cost = StepCost()
    cost.observe(1, 0.05)
    cost.observe(64, 0.01)
    assert cost.fit() is None and cost.is_worth_sharing(64)


@pytest.mark.parametrize("hardware, shared", [(None, True), (CPU, False), (GPU, True)])
def test_two_prompts_arriving_together_share_a_step_only_where_that_is_cheaper(hardware, shared):
    scheduler = make_scheduler(num_slots=2, num_batch=64)
    if hardware:
        scheduler.cost = learned(*hardware)
    first, second = make_seq(list(range(1, 11))), make_seq(list(range(20, 30)))
    scheduler.add(first)
    scheduler.add(second)
    plan = scheduler.plan()
    assert [chunk.request for chunk in plan.chunks] == ([first, second] if shared else [first])
    run_plan(scheduler, plan)
    plan = scheduler.plan()
    if not shared:  # the first decodes its next token while the second's prompt is computed
        assert [(chunk.request, chunk.num_tokens) for chunk in plan.chunks] == [(first, 1), (second, 10)]
