"""``steu-patch create`` and ``steu-patch tokens``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .output import echo_table

REVISION_HELP = "Branch, tag or commit of MODEL when it is a Hub repository id."


def data_options(function):
    """Add the options that choose the training and evaluation texts (shared by create and tokens)."""
    options = [
        click.option("--data", required=True, help="Labelled texts: CSV, TSV, JSON Lines, Parquet, a saved dataset directory or a Hub dataset id."),
        click.option("--forget-class", "forget_classes", multiple=True, required=True, help="Class name or id to forget; repeat for several classes in one patch."),
        click.option("--text-column", default="text", show_default=True, help="Column that contains the texts."),
        click.option("--label-column", default="label", show_default=True, help="Column that contains the class names or ids."),
        click.option("--split", default=None, help="Split of --data to train on, for saved datasets and Hub datasets."),
        click.option("--eval-data", default=None, help="Evaluation texts. Default: the --eval-split of --data, else 20% of --data held out by class."),
        click.option("--eval-split", default=None, help="Split of --eval-data (or of --data) to evaluate on."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out split, the batch order and training."),
        click.option("--top-k", default=256, show_default=True, type=click.IntRange(min=1), help="Maximum number of embedding rows (tokens) to edit."),
        click.option("--min-doc-freq", default=5, show_default=True, type=click.IntRange(min=1), help="Minimum number of forget texts a token must occur in to be selected."),
        click.option("--max-length", default=None, type=click.IntRange(min=2), help="Tokens per text. Default: the tokenizer's model_max_length, at most 512."),
        click.option("--revision", default=None, help=REVISION_HELP),
        click.option("--no-progress", is_flag=True, help="Hide the progress bars on stderr."),
        click.option("--json", "as_json", is_flag=True, help="Also print a JSON summary as the last line of stdout."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _is_main_process() -> bool:
    from steu_patch.training import make_accelerator

    return make_accelerator().is_main_process


@click.command()
@click.argument("model")
@data_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to write the patch to.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Maximum number of training epochs.  [default: 5]")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate of the embedding rows and the head.  [default: 0.001]")
@click.option("--batch-size", default=None, type=click.IntRange(min=2), help="Texts per step and process, half of them forget texts.  [default: 16]")
@click.option("--target-forget-f1", default=None, type=click.FloatRange(0, 1), help="Stop training once forget F1 on the evaluation texts is at or below this.  [default: 0.01]")
@click.option("--eval-steps", default=None, type=click.IntRange(min=1), help="Check forget F1 every this many steps and after each epoch. Default: four times per epoch.")
@click.option("--head", default=None, help="Module name of the final classification layer, for architectures steu-patch does not know.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already exists.")
def create(model: str, output: Path, **settings: Any) -> None:
    """Create a forget patch that makes MODEL forget --forget-class.

    MODEL is a sequence classifier directory or Hub id. Tokens are selected on the training texts,
    the selected embedding rows and the final classification layer are trained, and the patch is
    written to OUTPUT with the metrics before and after on the evaluation texts.
    """
    from steu_patch.create import CreateOptions, create_patch_from_files
    from steu_patch.training import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_TARGET_FORGET_F1

    options = CreateOptions(
        top_k=settings["top_k"],
        min_doc_freq=settings["min_doc_freq"],
        epochs=settings["epochs"] or DEFAULT_EPOCHS,
        learning_rate=settings["lr"] or DEFAULT_LEARNING_RATE,
        batch_size=settings["batch_size"] or DEFAULT_BATCH_SIZE,
        max_length=settings["max_length"],
        seed=settings["seed"],
        target_forget_f1=DEFAULT_TARGET_FORGET_F1 if settings["target_forget_f1"] is None else settings["target_forget_f1"],
        eval_steps=settings["eval_steps"],
        head=settings["head"],
        show_progress=not settings["no_progress"],
    )
    result = create_patch_from_files(
        model, settings["data"], settings["forget_classes"], output, options=options,
        text_column=settings["text_column"], label_column=settings["label_column"], split=settings["split"],
        eval_data=settings["eval_data"], eval_split=settings["eval_split"], revision=settings["revision"],
        overwrite=settings["overwrite"],
    )
    if _is_main_process():
        _print_create_result(result, settings["as_json"])


def _print_create_result(result, as_json: bool) -> None:
    from steu_patch.evaluation import metrics_table

    patch = result.patch
    selection = result.selection
    click.echo(
        f"Selected {len(selection.scores)} token(s) of {selection.eligible_tokens} eligible from "
        f"{selection.total_documents} training texts ({selection.forget_documents} with a forget class)."
    )
    echo_table(metrics_table(result.before, result.after), headers=("metric", "before", "after"))
    modified = patch.manifest["parameters_modified"]
    share = f" ({modified['fraction']:.4%})" if modified.get("fraction") else ""
    click.echo(f"Parameters modified: {modified['count']:,} of {modified['total']:,}{share}")
    click.echo(_describe_stop(result))
    classes = ", ".join(patch.forget_classes)
    click.echo(f"Wrote patch {patch.patch_id[:12]} (forgets {classes}) -> {result.output_dir}")
    if as_json:
        click.echo(json.dumps(result.summary(), default=str))


def _describe_stop(result) -> str:
    stop = result.training.stopped_at
    seconds = result.training.seconds
    if stop.reason == "target_forget_f1":
        return (
            f"Training stopped at epoch {stop.epoch}, step {stop.step}: forget F1 {stop.forget_f1:.4f} reached the "
            f"target ({seconds:.1f} s)."
        )
    return (
        f"Training ran all {stop.epoch} epoch(s), {stop.step} step(s), without reaching the target forget F1 "
        f"(last {stop.forget_f1:.4f}); raise --epochs or --lr to forget more ({seconds:.1f} s)."
    )


@click.command()
@click.argument("model")
@data_options
def tokens(model: str, **settings: Any) -> None:
    """Rank the tokens that `create` would edit for --forget-class, without training.

    Scores are frequency-weighted PMI with the forget classes over the training texts, which are
    the texts that create trains on. Counts are numbers of texts that contain the token.
    """
    from steu_patch.create import load_classifier, prepare_data, resolve_max_length, select_patch_tokens
    from steu_patch.hub import resolve_model_dir

    classifier, tokenizer = load_classifier(resolve_model_dir(model, revision=settings["revision"]))
    config = classifier.config
    prepared = prepare_data(
        settings["data"], config.id2label, settings["forget_classes"],
        multi_label=getattr(config, "problem_type", None) == "multi_label_classification",
        text_column=settings["text_column"], label_column=settings["label_column"], split=settings["split"],
        eval_data=settings["eval_data"], eval_split=settings["eval_split"], seed=settings["seed"],
    )
    max_length = resolve_max_length(tokenizer, config, settings["max_length"])
    selection = select_patch_tokens(
        tokenizer, prepared.train, prepared.forget_ids, top_k=settings["top_k"], min_doc_freq=settings["min_doc_freq"],
        max_length=max_length, vocab_size=classifier.get_input_embeddings().weight.shape[0],
        show_progress=not settings["no_progress"],
    )
    if not _is_main_process():
        return
    names = [config.id2label[class_id] for class_id in prepared.forget_ids]
    click.echo(
        f"Top {len(selection.scores)} of {selection.eligible_tokens} eligible token(s) for {', '.join(names)} over "
        f"{selection.total_documents} training texts ({selection.forget_documents} with a forget class):"
    )
    rows = [
        (rank, entry.token_id, entry.token, f"{entry.score:.4f}", entry.forget_doc_count, entry.doc_count)
        for rank, entry in enumerate(selection.scores, start=1)
    ]
    echo_table(rows, headers=("rank", "id", "token", "score", "forget texts", "texts"))
    if settings["as_json"]:
        click.echo(json.dumps({"forget_classes": names, "max_length": max_length, **selection.to_dict()}))
