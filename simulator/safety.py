"""Deterministic safety blocks for configured words.

Gemini refuses unsafe requests in two different shapes, and a client must handle both: the
*prompt* is blocked (``promptFeedback.blockReason``, no candidates) or the *output* is withheld
(a candidate with ``finishReason: IMAGE_SAFETY`` and no image). Which shape a word triggers is
fixed by its position in ``block_words``: words at even positions (1st, 3rd, ...) block the prompt,
words at odd positions block the image. So ``--block-words gore,weapon`` gives one of each, and the
same prompt always gets the same answer. Matching is case-insensitive on whole words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BlockShape = Literal["prompt", "image"]


@dataclass(frozen=True)
class BlockDecision:
    word: str
    shape: BlockShape

    @property
    def reason(self) -> str:
        """Google's enum value: ``blockReason`` for prompt blocks, ``finishReason`` for image blocks."""
        return "SAFETY" if self.shape == "prompt" else "IMAGE_SAFETY"


def find_block(prompt: str, block_words: tuple[str, ...]) -> BlockDecision | None:
    """The first configured word (in configuration order) that occurs in ``prompt``, if any."""
    for index, word in enumerate(block_words):
        if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE):
            return BlockDecision(word=word, shape="prompt" if index % 2 == 0 else "image")
    return None
