"""The recipe of a model family: several ONNX parts that run together (an encoder–decoder with a KV cache).

A family recipe names the parts by their role in generation (`encoder`, `decoder` for the first step,
`decoder_with_past` for every later step: optimum's seq2seq layout), how generation runs (start and end
token, length, vocabulary), and variants that say which method each part gets. Parts are keyed by role,
so other splits (a VLM's vision + embedding + text) add roles and a generation loop, not a new schema.
It shares every other section (data, gates, bench, promotion) with the one-model recipe in `schema.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator

from quant.recipe.schema import (
    Bench,
    DataSet,
    DynamicInt8Options,
    Fp16Options,
    Gate,
    ImageInput,
    Promotion,
    StaticInt8Options,
    Strict,
    Tasks,
    WeightOnlyOptions,
    check_variant_names,
    variant_method,
)

# Roles the encoder–decoder generation loop (quant.seq2seq.generate) knows, and the files optimum names them.
ROLES: tuple[str, ...] = ("encoder", "decoder", "decoder_with_past")
OPTIMUM_FILES = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}
DECODER_ROLES: tuple[str, ...] = ("decoder", "decoder_with_past")
# A variant may give one setting to several parts at once; a part's own entry wins over a group's.
GROUPS: dict[str, tuple[str, ...]] = {"decoders": DECODER_ROLES, "all": ROLES}
MERGED_DECODER = "decoder_merged"
MERGED_REFUSAL = (
    "the merged decoder (decoder_model_merged.onnx: both decoder paths under an If on use_cache_branch) is not supported: "
    "static INT8 cannot reach inside its subgraphs and each path needs its own settings; give the two files optimum also "
    "writes (decoder: decoder_model.onnx, decoder_with_past: decoder_with_past_model.onnx; `optimum-cli export onnx "
    "--no-post-process` keeps them)"
)


class FamilyPart(Strict):
    """One ONNX file of the family."""

    path: str = Field(description="The part's .onnx file, relative to the family's `folder`.")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="When given, the file must have this sha256 (lock files pin it)."
    )


def _default_parts() -> dict[str, FamilyPart]:
    return {role: FamilyPart(path=file) for role, file in OPTIMUM_FILES.items()}


TokenRef = int | str


class Generation(Strict):
    """How greedy generation runs. Left out, each value is read from `generation_config.json` in the family's folder
    (optimum/transformers: decoder_start_token_id or bos_token_id, eos_token_id, max_length)."""

    vocab: str | None = Field(
        default="vocab.json",
        description="token -> id JSON (a Hugging Face vocab.json), relative to the family's folder: turns tokens into text for the "
        "label metrics and names tokens in the report; null: texts are token ids.",
    )
    config: str | None = Field(
        default="generation_config.json", description="Generation config JSON in the family's folder (used when it exists)."
    )
    start_token: TokenRef | None = Field(default=None, description="Token the decoder starts from: an id or a token of `vocab` (e.g. '<s>').")
    end_token: TokenRef | None = Field(default=None, description="Token that ends a sequence: an id or a token of `vocab` (e.g. '</s>').")
    max_new_tokens: int | None = Field(
        default=None, gt=0, description="Generated tokens at most per input (default: the config's max_length - 1)."
    )
    skip_tokens: list[TokenRef] = Field(
        default_factory=list, description="Tokens left out of the text besides the start and end token (e.g. '<pad>')."
    )


class Family(Strict):
    """The family's files and how they generate."""

    kind: Literal["encoder_decoder"] = Field(
        default="encoder_decoder", description="encoder_decoder: encoder once, then a decoder per generated token fed its past keys/values."
    )
    folder: str = Field(description="Folder holding the parts (and vocab/config), relative to the recipe's folder.")
    parts: dict[str, FamilyPart] = Field(
        default_factory=_default_parts,
        description="Per role (encoder, decoder, decoder_with_past): its file. Default: optimum's file names. "
        "decoder_merged (one If-merged decoder) is refused: give the two decoder files.",
    )
    generation: Generation = Field(default_factory=Generation)
    assets: list[str] = Field(
        default_factory=list,
        description="Other files of the family released unchanged beside the parts (default: vocab and config when they exist).",
    )

    @field_validator("parts")
    @classmethod
    def _known_roles(cls, value: dict[str, FamilyPart]) -> dict[str, FamilyPart]:
        if MERGED_DECODER in value:
            raise ValueError(MERGED_REFUSAL)
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; an encoder_decoder family has: {', '.join(ROLES)}")
        missing = [role for role in ROLES if role not in value]
        if missing:
            raise ValueError(f"part(s) {missing} missing; an encoder_decoder family needs {', '.join(ROLES)}")
        return value


PartMethod = Annotated[
    Annotated[Fp16Options, Tag("fp16")]
    | Annotated[DynamicInt8Options, Tag("dynamic_int8")]
    | Annotated[StaticInt8Options, Tag("static_int8")]
    | Annotated[WeightOnlyOptions, Tag("weight_only")],
    Discriminator(
        variant_method,
        custom_error_type="unknown_method",
        custom_error_message="a part's 'method' must be one of: fp16, dynamic_int8, static_int8, weight_only",
    ),
]


class FamilyVariant(Strict):
    """One variant of the family: a method per part (parts not named stay FP32), judged as a whole on generated text."""

    parts: dict[str, PartMethod] = Field(
        description="Per part (encoder, decoder, decoder_with_past) or group of parts (decoders: both decoder files; all): the method "
        "and its options. A part's own entry wins over `decoders`, which wins over `all`.",
    )
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")

    @field_validator("parts")
    @classmethod
    def _parts_are_plain(cls, value: dict[str, object]) -> dict[str, object]:
        if not value:
            raise ValueError("name at least one part (or `all`) and its method")
        for key, options in value.items():
            if key == MERGED_DECODER:
                raise ValueError(MERGED_REFUSAL)
            if key not in ROLES and key not in GROUPS:
                raise ValueError(f"unknown part '{key}'; parts are {', '.join(ROLES)}, groups {', '.join(GROUPS)}")
            if getattr(options, "gates", None):
                raise ValueError(f"parts.{key}: gates belong to the variant (the family is judged as a whole), not to a part")
            if getattr(options, "fallback", None) is not None:
                raise ValueError(f"parts.{key}: a fallback search is not available for a part of a family")
        return value

    def resolved(self) -> dict[str, PartMethod]:
        """The method of each part that gets one: its own entry, else its group's (`decoders`, then `all`)."""
        return {role: self.parts[key] for role, key in self.entries().items()}

    def entries(self) -> dict[str, str]:
        """Per part that gets a method, the `parts` key it comes from (the part itself, `decoders` or `all`)."""
        chosen: dict[str, str] = {}
        for role in ROLES:
            for key in (role, *(group for group, members in GROUPS.items() if role in members)):
                if key in self.parts:
                    chosen[role] = key
                    break
        return chosen


class FamilyRecipe(Strict):
    """A quantization recipe for a model family (encoder–decoder with KV cache): its parts, how they generate, the variants
    (a method per part), and the gates on generated text vs FP32."""

    name: str = Field(description="Recipe name; names the release folder.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = Field(default="", description="Free text for humans.")
    family: Family
    inputs: dict[str, ImageInput] = Field(default_factory=dict, description="Per encoder input name: how images become its tensor.")
    calibration: DataSet | None = Field(
        default=None, description="Calibration images (static INT8 parts: the encoder's inputs, and the decoder's captured from FP32 generation)."
    )
    tuning: DataSet | None = Field(
        default=None,
        description="Images data-driven choices would be made on, disjoint from calibration and evaluation (checked and recorded; "
        "no family variant makes such a choice yet: the gates judge on `evaluation` alone).",
    )
    evaluation: DataSet = Field(description="Held-out images (with labels for the label metrics) every variant and FP32 generate on.")
    variants: dict[str, FamilyVariant] = Field(description="Variants to build, by name.")
    gates: list[Gate] = Field(default_factory=list, description="Gates applied to every variant unless the variant overrides them.")
    bench: Bench = Field(default_factory=Bench, description="Latency per generated token: interleaved FP32/variant rounds of `samples` images.")
    tasks: Tasks = Field(default_factory=Tasks)
    promotion: Promotion = Field(default_factory=Promotion)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, FamilyVariant]) -> dict[str, FamilyVariant]:
        check_variant_names(value)  # type: ignore[arg-type]
        return value

    @field_validator("variants")
    @classmethod
    def _calibration_when_needed(cls, value: dict[str, FamilyVariant], info: ValidationInfo) -> dict[str, FamilyVariant]:
        # A field validator (not a model validator) so the error names a field; `calibration` is validated first.
        needing = [
            name for name, v in value.items() if any(o.method == "static_int8" or getattr(o, "repair", "off") != "off" for o in v.resolved().values())
        ]
        if needing and "calibration" in info.data and info.data["calibration"] is None:
            raise ValueError(f"variants {needing} calibrate parts (static_int8, fp16 repair) and need a 'calibration' data set")
        return value

    @field_validator("promotion")
    @classmethod
    def _folder_only(cls, value: Promotion) -> Promotion:
        if value.to_mlflow:
            raise ValueError("'to: mlflow' does not take model families yet; release them to a folder")
        return value


def is_family_document(document: dict[str, object]) -> bool:
    """A recipe document describes a family when it has a `family` section (a one-model recipe has `model`)."""
    return "family" in document
