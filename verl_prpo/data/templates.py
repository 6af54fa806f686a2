"""Prompt templates: how a question becomes the chat messages stored in the parquet ``prompt`` column.

verl applies the policy tokenizer's chat template to these messages at rollout time (``RLHFDataset`` keeps
them raw), so a template here only decides the *messages*, never special tokens.

| name | messages |
|---|---|
| ``qwen_boxed`` | user: ``question + "\\nPlease reason step by step, and put your final answer within \\\\boxed{}."`` (the Qwen2.5-Math chain-of-thought prompt) |
| ``prpo`` | system: ``"Please reason step by step, and put your final answer within \\\\boxed{}."``; user: as ``qwen_boxed`` |
| ``prl`` | user: ``question + " Let's think step by step and output the final answer within \\\\boxed{}."`` (verl's MATH example instruction; PRL's code is built on verl. Our choice: the PRL paper does not print its prompt) |
| ``spro`` | user: as ``qwen_boxed`` (our choice: SPRO publishes no code or prompt; a plain user message with the boxed instruction) |
| ``none`` | user: the raw question |

Every template except ``none`` asks for a final ``\\boxed{}`` answer, which is what the ``prpo`` reward manager
and the evaluation grade (:func:`verl_prpo.math_grading.grade`).
"""

from __future__ import annotations

from dataclasses import dataclass

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
VERL_MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str | None
    user_prefix: str
    user_suffix: str
    description: str

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = []
        if self.system is not None:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": f"{self.user_prefix}{question}{self.user_suffix}"})
        return msgs


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate("qwen_boxed", None, "", "\n" + BOXED_INSTRUCTION, "Qwen2.5-Math CoT user prompt"),
        PromptTemplate("prpo", BOXED_INSTRUCTION, "", "\n" + BOXED_INSTRUCTION, "qwen_boxed + boxed system prompt"),
        PromptTemplate("prl", None, "", " " + VERL_MATH_INSTRUCTION, "verl MATH-example instruction"),
        PromptTemplate("spro", None, "", "\n" + BOXED_INSTRUCTION, "plain user message with the boxed instruction"),
        PromptTemplate("none", None, "", "", "the raw question as the user message"),
    )
}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def build_prompt(question: str, template: str = "qwen_boxed") -> list[dict[str, str]]:
    """Chat messages for ``question`` under the named template."""
    return get_template(template).messages(question)
