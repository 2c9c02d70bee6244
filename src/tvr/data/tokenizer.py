"""Caption tokenisation the way the CLIP4Clip family does it (datasets spec §1.4).

``[SOT] + BPE tokens[: max_words - 2] + [EOT]``, zero-padded to ``max_words``; ``max_words`` counts BPE
tokens, not words. The BPE itself (ftfy clean-up, whitespace collapse, lower-casing) is open_clip's
``SimpleTokenizer``, whose vocabulary ships inside the package.
"""

from __future__ import annotations

import torch


class CaptionTokenizer:
    def __init__(self, max_words: int = 32) -> None:
        if max_words < 3:
            raise ValueError("max_words must leave room for SOT, one token and EOT")
        self.max_words = max_words
        self._bpe = None
        # caption -> padded ids: a training epoch tokenises every caption again, and BPE with ftfy costs
        # about as much as reading the clip's frames from the frame cache
        self._ids: dict[str, torch.Tensor] = {}

    @property
    def bpe(self):
        if self._bpe is None:  # built lazily: each DataLoader worker builds its own
            from open_clip.tokenizer import SimpleTokenizer

            self._bpe = SimpleTokenizer()
        return self._bpe

    def __getstate__(self) -> dict:
        return {"max_words": self.max_words, "_bpe": None, "_ids": {}}

    def encode(self, caption: str) -> list[int]:
        bpe = self.bpe
        content = bpe.encode(caption)[: self.max_words - 2]
        return [bpe.sot_token_id, *content, bpe.eot_token_id]

    def __call__(self, caption: str) -> torch.Tensor:
        """Padded ids ``[max_words]``: a new tensor each call, so a caller may change it in place."""
        padded = self._ids.get(caption)
        if padded is None:
            ids = self.encode(caption)
            padded = torch.zeros(self.max_words, dtype=torch.long)
            padded[: len(ids)] = torch.tensor(ids)
            self._ids[caption] = padded
        return padded.clone()
