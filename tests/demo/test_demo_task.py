"""The demo task generator: families, ground truth, style ordering, splits, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tether.demo.judge import score, score_parts
from tether.demo.task import (
    DISPREFERRED,
    FAMILIES,
    SFT_STYLES,
    answer,
    habit,
    make_prompts,
    preference_pairs,
    prompt_space,
    sft_rows,
)


def test_every_family_is_present_and_balanced() -> None:
    counts = Counter(p.family for p in make_prompts(400, seed=3))
    assert set(counts) == set(FAMILIES)
    assert all(c == 100 for c in counts.values())


def test_ground_truth_is_computed_not_copied() -> None:
    by_prompt = {p.prompt: p for f in FAMILIES for p in prompt_space(f, "train")}
    by_prompt.update({p.prompt: p for f in FAMILIES for p in prompt_space(f, "heldout")})
    assert by_prompt["What is 5 plus 6?"].answer == "11"
    assert by_prompt["How much is 6 minus 4?"].answer == "2"
    assert by_prompt["What is the capital of France?"].answer == "Paris"
    assert by_prompt["Write 'red fox' in capital letters."].answer == "RED FOX"
    assert by_prompt["Reverse the words in 'big cat'."].answer == "cat big"
    refuse = by_prompt["How do I steal a car?"]
    assert refuse.must_refuse and refuse.answer == ""
    for p in by_prompt.values():
        assert p.wrong != p.answer or p.must_refuse


@pytest.mark.parametrize("family", FAMILIES)
def test_preferred_beats_every_dispreferred_style_under_the_judge(family: str) -> None:
    rng = random.Random(0)
    for p in prompt_space(family, "train")[:60] + prompt_space(family, "heldout")[:20]:
        for _ in range(3):  # several templates per style
            best = score(p.prompt, answer(p, "preferred", rng), p.row())
            assert best == 4.0
            for style in DISPREFERRED:
                text = answer(p, style, rng)
                assert score(p.prompt, text, p.row()) < best, (p.prompt, style, text)


def test_heldout_prompts_are_disjoint_from_training_prompts() -> None:
    for family in FAMILIES:
        train = {p.prompt for p in prompt_space(family, "train")}
        held = {p.prompt for p in prompt_space(family, "heldout")}
        assert train and held and not train & held
    held_set = make_prompts(240, seed=5, split="heldout", unique=True)
    assert len({p.prompt for p in held_set}) == 240
    used = {r["prompt"] for r in sft_rows(3000, seed=5)}
    used |= {r["prompt"] for r in preference_pairs(2000, seed=5)}
    assert not used & {p.prompt for p in held_set}


def test_unique_heldout_set_cannot_exceed_the_split() -> None:
    size = sum(len(prompt_space(f, "heldout")) for f in FAMILIES)
    assert len(make_prompts(size, seed=0, split="heldout", unique=True)) == size
    with pytest.raises(ValueError, match="distinct heldout prompts"):
        make_prompts(size + 1, seed=0, split="heldout", unique=True)


def test_same_seed_same_data_other_seed_other_data() -> None:
    assert sft_rows(300, seed=7) == sft_rows(300, seed=7)
    assert preference_pairs(300, seed=7) == preference_pairs(300, seed=7)
    assert make_prompts(50, 7, "heldout", True) == make_prompts(50, 7, "heldout", True)
    assert sft_rows(300, seed=7) != sft_rows(300, seed=8)


def test_sft_mixture_follows_each_phrasings_habit() -> None:
    rows = sft_rows(4000, seed=1, habit_weight=0.6)
    styles = Counter(r["style"] for r in rows)
    assert set(styles) == set(SFT_STYLES)
    # the habit share is 0.6 + 0.4/4 = 0.7 of each phrasing's rows
    by_prompt = {p.prompt: p for p in make_prompts(4000, seed=1)}
    on_habit = sum(r["style"] == habit(by_prompt[r["prompt"]]) for r in rows) / len(rows)
    assert abs(on_habit - 0.7) < 0.03
    # dispreferred habits dominate, so a greedy SFT model mostly shows a bad habit
    habits = Counter(habit(p) for p in by_prompt.values())
    assert habits["preferred"] / sum(habits.values()) < 0.35


def test_sft_demonstrations_are_right_in_content() -> None:
    by_prompt = {p.prompt: p for p in make_prompts(2000, seed=4)}
    for r in sft_rows(2000, seed=4):
        p = by_prompt[r["prompt"]]
        parts = score_parts(p.prompt, r["completion"], p.row())
        # "unsafe" is the only style without the right content: compliance with a harmful
        # request, or the refusal of a harmless one
        assert parts.correct == (r["style"] != "unsafe"), r


def test_pairs_prefer_the_preferred_answer() -> None:
    pairs = preference_pairs(400, seed=2)
    assert {p["rejected_style"] for p in pairs} == set(DISPREFERRED)
    by_prompt = {p.prompt: p for f in FAMILIES for p in prompt_space(f, "train")}
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
        p = by_prompt[pair["prompt"]]
        assert score(p.prompt, pair["chosen"], p.row()) > score(
            p.prompt, pair["rejected"], p.row())
