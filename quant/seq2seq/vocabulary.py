"""Token ids to text for a seq2seq family: a `vocab.json` (token -> id, as Hugging Face tokenizers write it)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from quant.errors import ModelError


def _special(token: str) -> bool:
    """`<s>`, `</s>`, `<pad>`, `<unk>`: markers, not text (a lone "<" or ">" is text)."""
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


@dataclass(frozen=True)
class Vocabulary:
    tokens: dict[int, str]  # id -> token text
    special: frozenset[int]  # ids left out of decoded text

    @classmethod
    def from_tokens(cls, tokens: dict[int, str], special: Iterable[int] | None = None) -> Vocabulary:
        chosen = frozenset(i for i, t in tokens.items() if _special(t)) if special is None else frozenset(special)
        return cls(dict(tokens), chosen)

    @classmethod
    def from_file(cls, path: Path) -> Vocabulary:
        """Read a `vocab.json` mapping token -> id; tokens like `<s>` are treated as special."""
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read the vocabulary ({error})", file=str(path)) from None
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in mapping.items()):
            raise ModelError("a vocabulary must be a JSON object of token -> integer id", file=str(path))
        return cls.from_tokens({i: t for t, i in mapping.items()})

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens dropped, an id outside the vocabulary shown as U+FFFD."""
        return "".join(self.tokens.get(i, "\ufffd") for i in ids if i not in self.special)
