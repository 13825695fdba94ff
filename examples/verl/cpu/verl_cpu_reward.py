"""The reward of the CPU harness's toy task (`reward.custom_reward_function.path` points here).

A harness for trying and testing, not a training setup. The prompts ask for the last digit of a
small sum ("what is the last digit of 3 plus 4"); a random tiny model answers with byte salad, so
the score is made to vary across responses: 1 when the right digit appears in the response, plus
half the fraction of its characters that are digits.
"""


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info=None, **kwargs) -> float:
    """One response's score (float in [0, 1.5]); `solution_str` is the decoded response text and
    `ground_truth` the expected digit as a string."""
    text = solution_str.strip()
    if not text:
        return 0.0
    digits = sum(ch.isdigit() for ch in text)
    return float(str(ground_truth) in text) + 0.5 * digits / len(text)
