"""What the model is given and when it stops, written once for `run`, `decode` and the recipe's
evaluation: the prompt text (completion, or infilling in PSM/SPM order with the model's FIM tokens),
its token ids, and the stop condition (the task's stop strings, EOS, the end-of-infill token).

The whitespace rule: a completion prompt loses its trailing whitespace (as bigcode-evaluation-harness
does). A prompt that ends in a newline asks a byte-level BPE model for a token boundary it saw
mostly at the end of files, and it stops or derails; without it the model writes the newline and
indentation itself. `run` applies it through the task loaders (the reference is re-based so that
prompt + reference is still the dataset's program); `decode` and the recipe through ``free_prompt``."""

from __future__ import annotations

from harness.decoding import StopCondition
from harness.errors import HarnessError
from harness.tasks import Problem


def free_prompt(text: str) -> str:
    """A prompt typed by a user (decode) or read raw (the recipe): the whitespace rule."""
    return text.rstrip()


def prompt_text(problem: Problem, fim=None, order: str = "psm") -> str:
    """Completion prompts as loaded; infilling prompts in PSM or SPM order with the model's FIM tokens."""
    if problem.suffix is None:
        return problem.prompt
    if fim is None:
        raise HarnessError(f"task {problem.task} needs fill-in-the-middle tokens, and the tokenizer has none")
    if order == "spm":
        return f"{fim.prefix}{fim.suffix}{problem.suffix}{fim.middle}{problem.prompt}"
    return f"{fim.prefix}{problem.prompt}{fim.suffix}{problem.suffix}{fim.middle}"


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, starting with BOS where the tokenizer has one (as CodeLlama's adds)."""
    ids = list(tokenizer(text, add_special_tokens=True).input_ids)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def prompt_ids(lm, problem: Problem, order: str = "psm") -> list[int]:
    return encode(lm.tokenizer, prompt_text(problem, lm.fim, order))


def stop_condition(lm, max_new_tokens: int, stop: tuple[str, ...] = (), infilling: bool = False) -> StopCondition:
    """``max_new_tokens``, the stop strings, EOS, and for infilling the model's end-of-infill token."""
    eos = lm.eos_token_ids
    if infilling and lm.fim is not None:
        eos = eos | {lm.tokenizer.convert_tokens_to_ids(lm.fim.end)}
    return StopCondition(max_new_tokens, tuple(stop), eos)


def problem_stop(lm, problem: Problem, max_new_tokens: int) -> StopCondition:
    return stop_condition(lm, max_new_tokens, problem.stop, infilling=problem.suffix is not None)
