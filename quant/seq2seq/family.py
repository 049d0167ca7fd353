"""A family recipe's files, checked before anything is built: every part found, checked and hashed, wired as
the generation loop needs it (read from the ONNX input/output names), and the generation settings resolved
from the recipe, the family's generation_config.json and its vocabulary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quant.errors import ModelError, RecipeError
from quant.model import ModelInfo, inspect_model, session
from quant.recipe.family import DECODER_ROLES, MERGED_REFUSAL, ROLES, Family, TokenRef
from quant.recipe.schema import resolve
from quant.seq2seq.generate import ENCODER_STATES, INPUT_IDS, PAST_PREFIX, PRESENT_PREFIX, GenerationConfig
from quant.seq2seq.generate import Family as Sessions
from quant.seq2seq.vocabulary import Vocabulary

LOGITS = "logits"
USE_CACHE_BRANCH = "use_cache_branch"  # the merged decoder's switch between its two If branches
PRIVATE_USE = 0xF0000  # without a vocabulary, token i reads as the one character chr(PRIVATE_USE + i)


@dataclass(frozen=True)
class FamilyInfo:
    """The checked family: its parts by role, how it generates, and how tokens become text."""

    folder: Path
    parts: dict[str, ModelInfo]  # by role
    generation: GenerationConfig
    vocabulary: Vocabulary  # tokens to text; without a vocab file each id is one private-use character (CER = token error rate)
    has_vocabulary: bool
    assets: dict[str, Path]  # released unchanged beside the parts, by file name

    @property
    def sha256(self) -> str:
        """One hash of the whole family: each part's role and file hash."""
        lines = "".join(f"{role} {info.sha256}\n" for role, info in self.parts.items())
        return hashlib.sha256(lines.encode()).hexdigest()

    @property
    def size_bytes(self) -> int:
        return sum(info.size_bytes for info in self.parts.values())

    @property
    def encoder_inputs(self) -> dict[str, Any]:
        return self.parts["encoder"].inputs


def open_sessions(paths: dict[str, Path], threads: int) -> Sessions:
    """onnxruntime sessions on a family's parts (FP32 or a variant), ready for quant.seq2seq.generate."""
    return Sessions(*(session(paths[role], threads=threads) for role in ROLES))


def _part(spec: Family, role: str, folder: Path) -> ModelInfo:
    where = f"family.parts.{role}.path"
    path = folder / spec.parts[role].path
    if not path.is_file():
        raise ModelError(f"the {role} part is not found", file=str(path), field=where)
    try:
        info = inspect_model(path)
    except ModelError as error:  # the same problem, named by the family's field
        raise ModelError(error.detail, file=str(path), field=where) from None
    pinned = spec.parts[role].sha256
    if pinned is not None and pinned != info.sha256:
        raise ModelError(f"sha256 is {info.sha256}, the recipe pins {pinned}", file=str(path), field=f"family.parts.{role}.sha256")
    return info


def _check_not_merged(info: ModelInfo, role: str) -> None:
    model = onnx.load(str(info.path), load_external_data=False)
    if USE_CACHE_BRANCH in info.inputs or any(node.op_type == "If" for node in model.graph.node):
        raise ModelError(MERGED_REFUSAL, file=str(info.path), field=f"family.parts.{role}.path")


def _check_wiring(parts: dict[str, ModelInfo]) -> None:
    """What the generation loop feeds each part must be what the parts declare (optimum's names)."""
    encoder, first, later = parts["encoder"], parts["decoder"], parts["decoder_with_past"]

    def refuse(role: str, message: str) -> None:
        raise ModelError(message, file=str(parts[role].path), field=f"family.parts.{role}.path")

    if not encoder.outputs:
        refuse("encoder", "the encoder has no output")
    for role in DECODER_ROLES:
        info = parts[role]
        if INPUT_IDS not in info.inputs:
            refuse(role, f"the {role} has no input '{INPUT_IDS}'; its inputs are {list(info.inputs)}")
        if LOGITS not in info.outputs:
            refuse(role, f"the {role} has no output '{LOGITS}'; its outputs are {list(info.outputs)}")
    if ENCODER_STATES not in first.inputs:
        refuse("decoder", f"the first-step decoder has no input '{ENCODER_STATES}' for the encoder's states; its inputs are {list(first.inputs)}")
    returned = {PAST_PREFIX + name[len(PRESENT_PREFIX) :] for info in (first, later) for name in info.outputs if name.startswith(PRESENT_PREFIX)}
    pasts = [name for name in later.inputs if name.startswith(PAST_PREFIX)]
    if not pasts:
        refuse("decoder_with_past", f"decoder_with_past has no '{PAST_PREFIX}*' input: it is not a decoder with a KV cache")
    unfed = sorted(set(pasts) - returned)
    if unfed:
        refuse("decoder_with_past", f"inputs {unfed[:4]} are returned by no decoder as '{PRESENT_PREFIX}*'")
    unknown = sorted(set(later.inputs) - set(pasts) - {INPUT_IDS, ENCODER_STATES, "encoder_attention_mask"})
    if unknown:
        refuse("decoder_with_past", f"inputs {unknown} are not fed by greedy generation (optimum's layout)")


def _read_json(path: Path, field: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RecipeError(f"cannot read it as JSON ({error})", file=str(path), field=field) from None
    if not isinstance(document, dict):
        raise RecipeError("must be a JSON object", file=str(path), field=field)
    return document


def _optional_file(spec: Family, folder: Path, key: str) -> Path | None:
    """The vocab or config file: None when left at its default and absent; a named file must exist."""
    name = getattr(spec.generation, key)
    if name is None:
        return None
    path = folder / name
    if path.is_file():
        return path
    if key in spec.generation.model_fields_set:
        raise RecipeError("file not found", file=str(path), field=f"family.generation.{key}")
    return None


def _token_id(ref: TokenRef | None, config: dict[str, Any], keys: tuple[str, ...], vocab: dict[str, int] | None, field: str) -> int:
    if ref is None:
        found = next((config[k] for k in keys if isinstance(config.get(k), int)), None)
        if found is None:
            raise RecipeError(f"not given, and no generation_config.json with {' or '.join(keys)} to read it from", field=field)
        return int(found)
    if isinstance(ref, int):
        return ref
    if vocab is None or ref not in vocab:
        raise RecipeError(f"token {ref!r} is not in the vocabulary" + ("" if vocab else " (there is none: give the id)"), field=field)
    return vocab[ref]


def _generation(spec: Family, folder: Path, vocab: dict[str, int] | None, vocab_size: int | None) -> tuple[GenerationConfig, frozenset[int]]:
    gen = spec.generation
    config_path = _optional_file(spec, folder, "config")
    config = _read_json(config_path, "family.generation.config") if config_path else {}
    start = _token_id(gen.start_token, config, ("decoder_start_token_id", "bos_token_id"), vocab, "family.generation.start_token")
    end = _token_id(gen.end_token, config, ("eos_token_id",), vocab, "family.generation.end_token")
    length = gen.max_new_tokens
    if length is None:
        if not isinstance(config.get("max_length"), int) or config["max_length"] < 2:
            raise RecipeError("not given, and no generation_config.json with max_length to read it from", field="family.generation.max_new_tokens")
        length = int(config["max_length"]) - 1  # max_length counts the start token
    for name, token in (("start_token", start), ("end_token", end)):
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise RecipeError(f"token id {token} is outside the decoder's {vocab_size} logits", field=f"family.generation.{name}")
    skipped = {_token_id(ref, config, (), vocab, f"family.generation.skip_tokens[{i}]") for i, ref in enumerate(gen.skip_tokens)}
    return GenerationConfig(start, end, length), frozenset({start, end, *skipped})


def inspect_family(spec: Family, base_dir: Path) -> FamilyInfo:
    """Find, check and hash every part; resolve how the family generates. Bad input raises, naming the field."""
    folder = resolve(base_dir, spec.folder)
    if not folder.is_dir():
        raise ModelError("the family's folder is not found", file=str(folder), field="family.folder")
    parts = {role: _part(spec, role, folder) for role in ROLES}
    for role in DECODER_ROLES:
        _check_not_merged(parts[role], role)
    _check_wiring(parts)
    vocab_path = _optional_file(spec, folder, "vocab")
    vocab = None
    if vocab_path is not None:
        raw = _read_json(vocab_path, "family.generation.vocab")
        if not all(isinstance(v, int) for v in raw.values()):
            raise RecipeError("a vocab.json maps each token to an integer id", file=str(vocab_path), field="family.generation.vocab")
        vocab = {str(k): int(v) for k, v in raw.items()}
    logits = parts["decoder"].outputs[LOGITS]
    vocab_size = logits[-1] if logits and isinstance(logits[-1], int) and logits[-1] > 0 else None
    generation, hidden = _generation(spec, folder, vocab, vocab_size)
    assets = {p.name: p for p in (vocab_path, _optional_file(spec, folder, "config")) if p is not None}
    for index, name in enumerate(spec.assets):
        path = folder / name
        if not path.is_file() or path.parent != folder:
            raise RecipeError("not a file in the family's folder", file=str(path), field=f"family.assets[{index}]")
        assets[path.name] = path
    tokens = {i: t for t, i in vocab.items()} if vocab else {i: chr(PRIVATE_USE + i) for i in range(vocab_size or 0)}
    return FamilyInfo(folder, parts, generation, Vocabulary.from_tokens(tokens, hidden), vocab is not None, assets)
