"""The interface every task implements: its rows, their tokens, its model and head, its metrics and report lines."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.data import Examples
    from trainer.schema import Problem


class Task:
    """One kind of fine-tuning (classification, sft, ...): everything in a run that depends on the task.

    The shared machinery (reading files, holding out splits, capping, the Trainer loop, saving) calls
    these hooks and never asks which task it runs. A subclass sets the class attributes and implements
    `load_examples`, `tokenize` and `load_model`; every other hook has a default that suits a task
    without classes and with text input. `task: module:ClassName` in a config runs a subclass of your own.

    Rows: `load_examples` turns each split's raw rows into the task's examples (checked, one problem
    per bad column, all at once). `tokenize` turns one split's examples into model inputs (token ids,
    or pixel values for an image task: `load_processor` then returns the image processor) and stats:
    `rows`, and where they apply `truncated`, `dropped`, `empty_texts`, `tokens`, `unknown_tokens`,
    `length_*`. Labels go in the `labels` key: a class id, a float (regression), a list of ids per
    token (-100 where no label applies; `PadCollator` pads them with -100) or of floats (multi-label).
    """

    name: ClassVar[str] = ""
    """The `task:` name this class is registered under (a task of your own: any short name)."""
    metrics: ClassVar[tuple[str, ...]] = ("eval_loss",)
    """What each evaluation reports (our names; Trainer's `eval_` prefix removed but from eval_loss).
    A study objective must name one of these."""
    directions: ClassVar[Mapping[str, str]] = {"eval_loss": "minimize"}
    """Each metric's natural direction: maximize | minimize."""
    recorded: ClassVar[tuple[str, ...]] = ()
    """Values an evaluation reports beside its metrics that are not objectives (multilabel's tuned `threshold`):
    kept in each evaluation of a trial's history as the metrics are."""
    default_objective: ClassVar[str] = "eval_loss"
    """The metric a study optimizes when its objective is not given."""
    eval_loss_per_token: ClassVar[bool] = False
    """True for a causal LM: `eval_loss` is the mean over all target tokens of the split (`TokenMean`), the
    same whatever the eval batch size; False: the model's loss averaged over rows (one item per row)."""
    eval_batch_size: ClassVar[int] = 32
    """Rows per evaluation batch unless `train.eval_batch_size` says otherwise (never the searched
    `train.batch_size`: a trial's evaluation is batched as every other trial's)."""
    generates: ClassVar[bool] = False
    """True when the model writes text (sft): `eval:` generation metrics apply (`generation_prompt`)."""
    prediction_loss_only: ClassVar[bool] = False
    """True: evaluation computes the loss only, keeping no predictions (and `compute_metrics` is not called)."""
    class_weights: ClassVar[bool] = False
    """Whether the task takes `train.class_weights: balanced` (its `loss` then weights the classes)."""
    peft_task_type: ClassVar[str | None] = None
    """The peft `TaskType` name LoRA wraps the model as (SEQ_CLS, CAUSAL_LM, TOKEN_CLS, ...), or None."""
    model_mapping: ClassVar[str] = ""
    """The transformers `modeling_auto` mapping of the model class (a worker imports its code ahead of time)."""
    reads_text: ClassVar[bool] = True
    """False for a task whose inputs are not text (images): its model folder needs no tokenizer files."""
    report_counts: ClassVar[tuple[str, ...]] = ()
    """Per-split stats beside `truncated` that the data report counts (sft: `dropped`)."""
    data_parallel: ClassVar[bool] = True
    """Whether a run may train data-parallel (a study's `resources.workers` > 1: one process per rank, each on its
    share of the batches, the HF Trainer's DDP); a task whose hooks cannot (say, a loss that needs the whole batch
    in one process) sets False and such a study is refused before any trial."""

    # --- config and model checks, before any data is read or weight loaded -------------------------------

    def check_config(self, cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
        """Rules on the config that only this task has; append each broken one to `problems`."""

    def check_model(self, cfg: TrainConfig, settings: dict[str, Any], source: str, problems: list[Problem]) -> None:
        """What the model's config (`settings`, config.json as a mapping; empty when unknown) rules out."""

    # --- rows -----------------------------------------------------------------------------------------

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        """Check the raw rows of every split ({split: rows}; `paths` says where each came from) and turn
        them into this task's examples; raise ConfigError listing every problem."""
        raise NotImplementedError

    def read_split(self, cfg: TrainConfig, path: str, key: str, source: str) -> list[dict[str, Any]]:
        """One split's raw rows from `path` (config key `key`): a data file, or what else the task reads (a
        folder of images per class)."""
        from trainer.data import read_rows

        return read_rows(path, key, source)

    def label_counts(self, rows: list[dict[str, Any]], examples: Examples) -> list[int] | None:
        """Rows per class of one split in id order (for the rare and absent class warnings), or None."""
        return None

    # --- tokens and batches ---------------------------------------------------------------------------

    def load_processor(self, location: str, source: str = "") -> Any:
        """What turns examples into model inputs: the model's tokenizer (an image task: its image processor)."""
        from trainer._model import load_tokenizer

        return load_tokenizer(location, source)

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One split's examples to model inputs, and what that cost (see the class docstring for the stats).

        A task whose `load_examples` sets `Examples.options` (settings from the config) gets them as a
        keyword argument `options`; a `template` entry in the stats (a mapping: `name`, ...) names the
        prompt format, recorded on every trial."""
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """What pads a list of tokenized rows into one batch of tensors."""
        from trainer._tokenize import PadCollator

        return PadCollator(tokenizer.pad_token_id or 0)

    def train_rows(self, cfg: TrainConfig, rows: list[dict[str, Any]]) -> Any:
        """What training draws its rows from (a list, or a torch Dataset over `rows`): default the tokenized rows
        as they are; an image task with `task_options.augment` returns them augmented anew at each draw. Evaluation
        always reads the rows as tokenized."""
        return rows

    # --- model ----------------------------------------------------------------------------------------

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        """The model with this task's head, from `location` (`labels`: class names in id order, or []).
        `options` go to `from_pretrained` as given (QLoRA: `quantization_config` and `dtype`); a task that
        takes none runs every job but QLoRA."""
        raise NotImplementedError

    def modules_to_save(self, model: Any) -> list[str] | None:
        """Modules LoRA trains in full and saves beside the adapter (a new head), or None."""
        return None

    def finish_model(self, model: Any, cfg: TrainConfig, examples: Examples) -> None:
        """After training, before the model is saved: make the weights stand alone (regression folds its
        standardisation into the head, so a saved model predicts in the data's units)."""

    def loss(self, cfg: TrainConfig, train_rows: list[dict[str, Any]], examples: Examples) -> Callable[..., Any] | None:
        """A Trainer `compute_loss_func` (class weights, say), or None for the model's own loss."""
        return None

    # --- metrics --------------------------------------------------------------------------------------

    def compute_metrics(self, pred: Any) -> dict[str, float]:
        """Trainer's `compute_metrics`: metrics from the predictions and labels of one evaluation."""
        return {}

    def metric_function(self, cfg: TrainConfig, examples: Examples) -> Callable[[Any], dict[str, float]]:
        """Trainer's `compute_metrics` for one run: a task whose metrics need the run's config or data (a
        tuned threshold, the target's scale in `examples.meta`) returns its own; default `compute_metrics`."""
        return self.compute_metrics

    def reported_metrics(self, cfg: TrainConfig | None = None) -> dict[str, str]:
        """Every metric a run of `cfg` reports, with its direction: the task's `metrics`, and where the task
        generates, those its `eval:` section adds (each usable as a study objective)."""
        out = {m: self.directions[m] for m in self.metrics}
        if cfg is not None and self.generates:
            from trainer.generation import generation_metrics

            out.update(generation_metrics(cfg.eval))
        return out

    def clean_metrics(self, raw: dict[str, Any], keep: Collection[str] | None = None) -> dict[str, float]:
        """Trainer's `eval_*` names to ours, keeping only `keep` (default: this task's `metrics`)."""
        keep = self.metrics if keep is None else keep
        out: dict[str, float] = {}
        for key, value in raw.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = key if key == "eval_loss" else key.removeprefix("eval_")
            if name in keep:
                out[name] = float(value)
        return out

    def generation_prompt(self, row: dict[str, Any], tokenizer: Any, options: dict[str, Any] | None = None) -> str:
        """A task that generates: the text its model continues for `row`, formatted as in training
        (`options`: the examples' `Examples.options`, such as the chat template)."""
        raise NotImplementedError

    # --- the data report ---------------------------------------------------------------------------------

    def describe_split(self, rows: list[dict[str, Any]], examples: Examples) -> dict[str, Any]:
        """What the data report adds about one split's examples (JSON-serialisable), e.g. a target's spread."""
        return {}

    def describe_lines(self, info: dict[str, Any]) -> list[str]:
        """Lines for `sftune data` from `describe_split`'s mapping (under `info['task']`)."""
        return []

    def show_row(self, row: dict[str, Any], labels: list[str]) -> str | None:
        """One example in a few words for the data report, or None for the shared rendering."""
        return None

    # --- words ----------------------------------------------------------------------------------------

    def warning_line(self, split: str, what: str, n: int, of: str, limit: str) -> str | None:
        """This task's own wording of a counted data warning (`what`: truncated, empty_texts, ...), or None
        for the shared wording. `of` is ' of <rows>' or '', `limit` ' max_length=<n>'."""
        return None

    def over_length_words(self, info: dict[str, Any]) -> str:
        """What happens to a split's rows over max_length, in the data report (`info`: the split's report)."""
        return ": their text is truncated"
