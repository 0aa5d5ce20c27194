"""The trainer's configuration: typed models that import without TensorFlow.

One file of this shape (YAML or JSON, camelCase keys) is what the operator mounts into every
worker and what `berth run` writes locally. The operator's `BertTraining` spec embeds the same
models, so the CRD schema, the operator and the trainer agree by construction.

    >>> cfg = TrainerConfig.model_validate({
    ...     "task": "pretraining", "vocabulary": "vocab.txt",
    ...     "data": {"train": "corpus/*.txt"}, "output": {"dir": "out"},
    ...     "model": {"size": "tiny"}})
    >>> cfg.model.resolved().hidden_size
    128
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dict form (what YAML manifests and config files hold)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Task(enum.StrEnum):
    PRETRAINING = "pretraining"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    TOKEN_CLASSIFICATION = "tokenClassification"
    QUESTION_ANSWERING = "questionAnswering"
    SEQ2SEQ = "seq2seq"
    MULTIPLE_CHOICE = "multipleChoice"


class ModelSize(enum.StrEnum):
    TINY = "tiny"
    MINI = "mini"
    SMALL = "small"
    MEDIUM = "medium"
    BASE = "base"
    LARGE = "large"


#: The BERT miniatures' (layers, hidden size) grid plus base and large.
MODEL_SIZES: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


class ResolvedModel(BaseModel):
    """Every model dimension, explicit (what the trainer builds)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_sequence_length: int
    dropout: float


class ModelConfig(ApiModel):
    """model: the BERT architecture, by named size or explicit dimensions."""

    size: ModelSize | None = Field(
        default=None,
        description="size: a named BERT size (tiny|mini|small|medium|base|large); explicit "
        "dimensions below override its values.",
    )
    num_layers: Annotated[int, Field(ge=1, le=48)] | None = Field(
        default=None, description="numLayers: number of Transformer layers."
    )
    hidden_size: Annotated[int, Field(ge=8, le=4096)] | None = Field(
        default=None, description="hiddenSize: width of every Transformer layer."
    )
    num_heads: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None, description="numHeads: attention heads; must divide hiddenSize."
    )
    intermediate_size: Annotated[int, Field(ge=8, le=16384)] | None = Field(
        default=None, description="intermediateSize: width of the feed-forward layer."
    )
    max_sequence_length: Annotated[int, Field(ge=8, le=4096)] = Field(
        default=512, description="maxSequenceLength: size of the position embedding."
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.1, description="dropout: dropout rate of the backbone."
    )

    @model_validator(mode="after")
    def _size_or_dims(self) -> ModelConfig:
        if self.size is None and (self.num_layers is None or self.hidden_size is None):
            raise ValueError("model: set size, or numLayers and hiddenSize")
        resolved = self.resolved()
        if resolved.hidden_size % resolved.num_heads:
            raise ValueError(
                f"model.numHeads: {resolved.num_heads} does not divide "
                f"hiddenSize {resolved.hidden_size}"
            )
        return self

    def resolved(self) -> ResolvedModel:
        layers, hidden = MODEL_SIZES[str(self.size)] if self.size else (0, 0)
        layers = self.num_layers or layers
        hidden = self.hidden_size or hidden
        return ResolvedModel(
            num_layers=layers,
            hidden_size=hidden,
            num_heads=self.num_heads or max(1, hidden // 64),
            intermediate_size=self.intermediate_size or 4 * hidden,
            max_sequence_length=self.max_sequence_length,
            dropout=self.dropout,
        )


class DataFormat(enum.StrEnum):
    TEXT = "text"
    TFRECORD = "tfrecord"
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    CONLL = "conll"
    SQUAD = "squad"
    GOOGLE_TFRECORD = "googleTfrecord"


class PrepareConfig(ApiModel):
    """data.prepare: tokenize and pack a text corpus into TFRecord shards before training, in
    parallel (task pretraining, data.format text)."""

    workers: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1,
        description="workers: prepare processes, each taking 1/workers of the input bytes (an "
        "Indexed Job of this many pods under the operator, local processes under `berth run`).",
    )
    shards_per_worker: Annotated[int, Field(ge=1, le=256)] = Field(
        default=1,
        description="shardsPerWorker: TFRecord files each worker writes (train-I-of-N, "
        "validation-I-of-N); workers x shardsPerWorker should be at least the training's "
        "input pipelines.",
    )
    output: str = Field(
        min_length=1,
        description="output: folder of the shards, shared by the prepare workers and the "
        "training (a volume or gs://). A finished slice whose fingerprint (input files, "
        "vocabulary and settings) matches is not prepared again.",
    )


class DataConfig(ApiModel):
    """data: where the examples come from."""

    train: str = Field(
        min_length=1,
        description="train: file path or glob of training data (local or gs://).",
    )
    validation: str | None = Field(
        default=None, description="validation: file path or glob of validation data."
    )
    format: DataFormat = Field(
        default=DataFormat.TEXT,
        description="format: text (one sentence per line, blank line between documents), "
        "tfrecord (written by `berth-trainer prepare`), csv, tsv, jsonl, conll (a token and "
        "its tag per line, a blank line between sentences), squad (SQuAD v1.1/v2.0 JSON) or "
        "googleTfrecord (masked examples written by Google BERT's create_pretraining_data.py, "
        "as in the MLPerf and NVIDIA BERT recipes).",
    )
    prepare: PrepareConfig | None = Field(
        default=None,
        description="prepare: tokenize and pack the text corpus into TFRecord shards before "
        "training, in parallel; the training then reads the shards.",
    )
    text_field: str = Field(
        default="text", description="textField: column/key of the first text (csv/tsv/jsonl)."
    )
    text_pair_field: str | None = Field(
        default=None, description="textPairField: column/key of the second text of a pair."
    )
    label_field: str = Field(
        default="label",
        description="labelField: column/key of the class label (regression: the number; "
        "multipleChoice: the index of the right ending).",
    )


class Packing(enum.StrEnum):
    NONE = "none"
    SEGMENT_PAIRS = "segmentPairs"
    FULL_SENTENCES = "fullSentences"
    DOC_SENTENCES = "docSentences"


class SentencePrediction(enum.StrEnum):
    NONE = "none"
    NEXT_SENTENCE = "nextSentence"
    SENTENCE_ORDER = "sentenceOrder"


class WholeWordMasking(enum.StrEnum):
    NONE = "none"
    WORD_PIECE = "wordPiece"
    CHINESE = "chinese"


class PretrainingConfig(ApiModel):
    """pretraining: how a corpus becomes pre-training examples (task pretraining only)."""

    packing: Packing = Field(
        default=Packing.FULL_SENTENCES,
        description="packing: how sentences fill each sequence. fullSentences (RoBERTa): "
        "consecutive sentences filling every example (the last one split), crossing documents "
        "with a [SEP]; docSentences: the same, ending each example with its document; "
        "segmentPairs (Google BERT): two segments A [SEP] B from one document (needed by "
        "sentencePrediction); none: one line per example, padded.",
    )
    sentence_prediction: SentencePrediction = Field(
        default=SentencePrediction.NONE,
        description="sentencePrediction: second objective beside masked-LM: none, "
        "nextSentence (BERT's NSP: B follows A, or comes from another document) or "
        "sentenceOrder (ALBERT's SOP: A and B in order, or swapped). Needs packing "
        "segmentPairs.",
    )
    whole_word_masking: WholeWordMasking = Field(
        default=WholeWordMasking.NONE,
        description="wholeWordMasking: none (mask word pieces independently), wordPiece "
        "(a word's ## pieces are masked together) or chinese (words from the jieba segmenter: "
        "all characters of a word are masked together, as in the Chinese BERT-wwm models).",
    )
    short_sequence_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.1,
        description="shortSequenceProbability: segmentPairs: share of examples packed to a "
        "random shorter length, so the model also sees short inputs (Google BERT's 0.1).",
    )

    @model_validator(mode="after")
    def _pairs_for_sentences(self) -> PretrainingConfig:
        if (
            self.sentence_prediction != SentencePrediction.NONE
            and self.packing != Packing.SEGMENT_PAIRS
        ):
            raise ValueError(
                "pretraining.sentencePrediction: needs pretraining.packing segmentPairs (the "
                "two segments whose relation it predicts)"
            )
        return self


class TagScheme(enum.StrEnum):
    BIO = "bio"
    BIOES = "bioes"


class TokenClassificationConfig(ApiModel):
    """tokenClassification: tagging every word, e.g. named entities (task tokenClassification)."""

    scheme: TagScheme = Field(
        default=TagScheme.BIO,
        description="scheme: tags are O or B-/I-TYPE (bio), or also E-/S-TYPE (bioes); a tag "
        "outside the scheme is a data error.",
    )
    tokens_field: str = Field(
        default="tokens", description="tokensField: jsonl key of the list of words."
    )
    tags_field: str = Field(default="tags", description="tagsField: jsonl key of their tags.")


class QuestionAnsweringConfig(ApiModel):
    """questionAnswering: extractive QA, SQuAD-style (task questionAnswering)."""

    doc_stride: Annotated[int, Field(ge=1)] = Field(
        default=64,
        description="docStride: word pieces between the starts of consecutive windows of a "
        "context longer than one window; at most sequenceLength - maxQueryLength - 3.",
    )
    max_query_length: Annotated[int, Field(ge=1)] = Field(
        default=32, description="maxQueryLength: word pieces of a question kept (the rest cut)."
    )
    max_answer_length: Annotated[int, Field(ge=1)] = Field(
        default=30, description="maxAnswerLength: longest answer predicted, in word pieces."
    )
    allow_no_answer: bool = Field(
        default=False,
        description="allowNoAnswer: SQuAD v2.0: a question may have no answer in its context "
        "(the model then answers the empty string).",
    )


class Seq2SeqConfig(ApiModel):
    """seq2seq: UniLM sequence-to-sequence generation on one BERT (task seq2seq)."""

    source_field: str = Field(default="source", description="sourceField: jsonl key of the input.")
    target_field: str = Field(
        default="target", description="targetField: jsonl key of the text to generate."
    )
    max_target_length: Annotated[int, Field(ge=2)] = Field(
        default=32,
        description="maxTargetLength: word pieces generated at most, the closing [SEP] "
        "included (a fixed length: decoding has static shapes); longer targets are cut. The "
        "source gets the other sequenceLength - maxTargetLength positions.",
    )
    beam_size: Annotated[int, Field(ge=1, le=16)] = Field(
        default=1,
        description="beamSize: beams of the search in validation and in the export; 1 is "
        "greedy decoding.",
    )


class MultipleChoiceConfig(ApiModel):
    """multipleChoice: picking the ending that continues a context, SWAG-style (task
    multipleChoice)."""

    context_field: str = Field(
        default="context",
        description="contextField: jsonl key of the context (the first text of every choice).",
    )
    endings_field: str = Field(
        default="endings",
        description="endingsField: jsonl key of the list of candidate endings (each the second "
        "text of a choice); data.labelField holds the index of the right one.",
    )
    num_choices: Annotated[int, Field(ge=2)] = Field(
        default=4,
        description="numChoices: endings of every example (a fixed number: shapes are "
        "static); an example with another number is a data error.",
    )


class Optimizer(enum.StrEnum):
    ADAMW = "adamw"
    LAMB = "lamb"


class Precision(enum.StrEnum):
    FLOAT32 = "float32"
    MIXED_BFLOAT16 = "mixed_bfloat16"
    MIXED_FLOAT16 = "mixed_float16"


class TrainingConfig(ApiModel):
    """training: the optimisation loop."""

    sequence_length: Annotated[int, Field(ge=8, le=4096)] = Field(
        default=128, description="sequenceLength: fixed length of every example (static shape)."
    )
    global_batch_size: Annotated[int, Field(ge=1)] = Field(
        default=32, description="globalBatchSize: examples per optimizer step over all workers."
    )
    steps: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="steps: total optimizer steps."
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1e-4, description="learningRate: peak learning rate."
    )
    warmup_steps: Annotated[int, Field(ge=0)] = Field(
        default=0, description="warmupSteps: linear warm-up steps before linear decay."
    )
    optimizer: Optimizer = Field(default=Optimizer.ADAMW, description="optimizer: adamw or lamb.")
    weight_decay: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.01, description="weightDecay: decoupled weight decay (not on LayerNorm/bias)."
    )
    clip_norm: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="clipNorm: global gradient-norm clip; 0 disables."
    )
    precision: Precision = Field(
        default=Precision.FLOAT32,
        description="precision: float32, mixed_bfloat16 or mixed_float16 (with loss scaling).",
    )
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1, description="gradientAccumulationSteps: micro-batches per optimizer step."
    )
    mask_probability: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.15, description="maskProbability: share of tokens masked for MLM."
    )
    max_predictions_per_sequence: Annotated[int, Field(ge=1)] = Field(
        default=20, description="maxPredictionsPerSequence: masked positions per example."
    )
    num_classes: Annotated[int, Field(ge=2)] | None = Field(
        default=None,
        description="numClasses: classes of the classification task (the other tasks learn "
        "their labels from the data).",
    )
    seed: int = Field(default=0, description="seed: seed of initialisation, masking, shuffling.")
    log_every_steps: Annotated[int, Field(ge=1)] = Field(
        default=10, description="logEverySteps: steps between log lines and metric updates."
    )
    jit_compile: bool | None = Field(
        default=None,
        description="jitCompile: compile each replica's forward and backward pass with XLA. "
        "Default: on GPUs and TPUs, off on CPUs (where XLA made BERT's step 2x slower).",
    )
    steps_per_execution: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="stepsPerExecution: optimizer steps run inside one tf.function call (one "
        "host round trip); must divide logEverySteps and checkpoint.everySteps. Default 1, on "
        "TPUs the greatest common divisor of those two.",
    )


class CheckpointConfig(ApiModel):
    """checkpoint: where and how often training state is saved for step-exact resume."""

    dir: str | None = Field(default=None, description="dir: checkpoint directory (local or gs://).")
    every_steps: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="everySteps: steps between checkpoints."
    )
    keep: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="keep: number of checkpoints kept."
    )
    background: bool = Field(
        default=False,
        description="background: write periodic checkpoints in a thread from a snapshot "
        "taken between steps, so training goes on while they are written; costs up to one "
        "more copy of the weights and optimizer slots in memory while a write runs.",
    )


class OutputConfig(ApiModel):
    """output: where the trained model is exported."""

    dir: str = Field(min_length=1, description="dir: export directory (local or gs://).")


class TrainerConfig(ApiModel):
    """The whole trainer configuration (the file mounted into every worker)."""

    task: Task = Field(
        default=Task.PRETRAINING,
        description="task: pretraining (MLM), classification, regression (a number per text "
        "or pair), tokenClassification (a tag per word, e.g. NER), questionAnswering "
        "(extractive, SQuAD), seq2seq (UniLM generation) or multipleChoice (the right ending "
        "of a context, SWAG).",
    )
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(size=ModelSize.BASE),
        description="model: the BERT architecture.",
    )
    vocabulary: str = Field(min_length=1, description="vocabulary: path of a WordPiece vocab.txt.")
    init_checkpoint: str | None = Field(
        default=None,
        description="initCheckpoint: Google BERT checkpoint prefix, Hugging Face BERT "
        "directory (config.json + model.safetensors), keras-hub preset directory or Berth "
        "checkpoint directory to start from.",
    )
    data: DataConfig = Field(description="data: training and validation data.")
    pretraining: PretrainingConfig = Field(
        default_factory=PretrainingConfig,
        description="pretraining: packing, second objective and whole-word masking.",
    )
    token_classification: TokenClassificationConfig = Field(
        default_factory=TokenClassificationConfig,
        description="tokenClassification: tag scheme and jsonl keys (task tokenClassification).",
    )
    question_answering: QuestionAnsweringConfig = Field(
        default_factory=QuestionAnsweringConfig,
        description="questionAnswering: windows and answers (task questionAnswering).",
    )
    seq2seq: Seq2SeqConfig = Field(
        default_factory=Seq2SeqConfig,
        alias="seq2seq",  # not the generator's "seq2Seq"
        description="seq2seq: target length, beam and jsonl keys (task seq2seq).",
    )
    multiple_choice: MultipleChoiceConfig = Field(
        default_factory=MultipleChoiceConfig,
        description="multipleChoice: jsonl keys and the number of endings (task multipleChoice).",
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="training: the optimisation loop."
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="checkpoint: fault-tolerance checkpoints."
    )
    output: OutputConfig = Field(description="output: where the trained model goes.")

    @model_validator(mode="after")
    def _cross_field(self) -> TrainerConfig:
        check_trainer_rules(self)
        return self


def check_trainer_rules(cfg: TrainerConfig) -> None:
    """Cross-field rules; each message starts with the offending field's path."""
    model = cfg.model.resolved()
    if cfg.training.sequence_length > model.max_sequence_length:
        raise ValueError(
            f"training.sequenceLength: {cfg.training.sequence_length} exceeds "
            f"model.maxSequenceLength {model.max_sequence_length}"
        )
    if cfg.task == Task.CLASSIFICATION and cfg.training.num_classes is None:
        raise ValueError("training.numClasses: required when task is classification")
    if (
        cfg.task == Task.PRETRAINING
        and cfg.training.max_predictions_per_sequence > cfg.training.sequence_length
    ):
        raise ValueError(
            "training.maxPredictionsPerSequence: must not exceed training.sequenceLength"
        )
    n, qa = cfg.training.sequence_length, cfg.question_answering
    if cfg.task == Task.QUESTION_ANSWERING and qa.doc_stride + qa.max_query_length + 3 > n:
        raise ValueError(
            f"questionAnswering.docStride: {qa.doc_stride} exceeds the context window "
            f"training.sequenceLength - questionAnswering.maxQueryLength - 3 = "
            f"{n - qa.max_query_length - 3} (windows would skip context)"
        )
    if cfg.task == Task.SEQ2SEQ and cfg.seq2seq.max_target_length + 3 > n:
        raise ValueError(
            f"seq2seq.maxTargetLength: {cfg.seq2seq.max_target_length} leaves no source in "
            f"training.sequenceLength {n} (needs maxTargetLength + 3 <= sequenceLength)"
        )
    if cfg.data.prepare is not None and (
        cfg.task != Task.PRETRAINING or cfg.data.format != DataFormat.TEXT
    ):
        raise ValueError("data.prepare: only for task pretraining with data.format text")
    if cfg.data.format == DataFormat.GOOGLE_TFRECORD and cfg.task != Task.PRETRAINING:
        raise ValueError("data.format: googleTfrecord is pre-training data (task pretraining)")
    if (
        cfg.data.format == DataFormat.GOOGLE_TFRECORD
        and cfg.pretraining.sentence_prediction == SentencePrediction.SENTENCE_ORDER
    ):
        raise ValueError(
            "pretraining.sentencePrediction: googleTfrecord records carry next-sentence labels "
            "(next_sentence_labels), not sentence-order ones: use nextSentence or none"
        )
    k = cfg.training.steps_per_execution
    if k is not None and (cfg.training.log_every_steps % k or cfg.checkpoint.every_steps % k):
        raise ValueError(
            "training.stepsPerExecution: must divide training.logEverySteps and "
            "checkpoint.everySteps"
        )


def load_trainer_config(path: str | Path) -> TrainerConfig:
    """Read and validate a YAML or JSON trainer config file."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return TrainerConfig.model_validate(data)
