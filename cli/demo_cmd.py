"""``steu-patch demo`` and ``steu-patch finetune``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .output import echo_table

from steu_patch.demo import ClassifierRecipe

_RECIPE = ClassifierRecipe()


def _recipe_options(function):
    """Add the options that define the fine-tuned classifier (shared by ``demo`` and ``finetune``)."""
    options = [
        click.option("--encoder", default=None, help="Pretrained encoder directory or Hub id [default: the bundled all-MiniLM-L6-v2]."),
        click.option("--data", "data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Prepared gzip CSV with text,label,split columns [default: the bundled MTSamples subset]."),
        click.option("--finetune-epochs", type=click.FloatRange(min=0, min_open=True), default=_RECIPE.epochs, show_default=True, help="Fine-tuning epochs."),
        click.option("--finetune-lr", type=click.FloatRange(min=0, min_open=True), default=_RECIPE.learning_rate, show_default=True, help="Fine-tuning peak learning rate."),
        click.option("--max-length", type=click.IntRange(min=8, max=512), default=_RECIPE.max_length, show_default=True, help="Tokens per note."),
        click.option("--seed", type=int, default=_RECIPE.seed, show_default=True, help="Random seed."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _recipe(encoder, data, finetune_epochs, finetune_lr, max_length, seed):
    return ClassifierRecipe(
        encoder=encoder, data=None if data is None else str(data), epochs=finetune_epochs,
        learning_rate=finetune_lr, max_length=max_length, seed=seed,
    )


@click.command()
@click.option("--forget-class", "forget_classes", multiple=True, help='Class to forget; repeat for several [default: "Cardiovascular / Pulmonary"].')
@_recipe_options
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Embedding rows to edit [default: create's default, 256].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum STEU training epochs [default: create's default].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="STEU learning rate [default: create's default].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache directory for the fine-tuned classifier [default: $STEU_PATCH_CACHE or ~/.cache/steu-patch].")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the patch [default: CACHE_DIR/demo/patch, replaced on each run].")
@click.option("--rebuild", is_flag=True, help="Fine-tune the classifier again even if it is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object on the last line of stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def demo(forget_classes, encoder, data, finetune_epochs, finetune_lr, max_length, seed, top_k, epochs, lr, cache_dir, output, rebuild, as_json, no_progress):
    """Forget one specialty of a clinical-note classifier, end to end.

    Loads (or fine-tunes and caches) a classifier of 13 MTSamples specialties, creates a forget patch,
    applies it, evaluates before and after on the test split, reverts it and checks the round trip
    bit for bit. Runs offline with the bundled encoder and data.
    """
    from steu_patch.demo import DEFAULT_FORGET_CLASS, DemoOptions, run_demo

    options = DemoOptions(
        forget_classes=tuple(forget_classes) or (DEFAULT_FORGET_CLASS,),
        recipe=_recipe(encoder, data, finetune_epochs, finetune_lr, max_length, seed),
        cache_dir=cache_dir, output=output, top_k=top_k, epochs=epochs, learning_rate=lr,
        rebuild=rebuild, show_progress=not no_progress,
    )
    result = run_demo(options)
    _print_summary(result)
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
    if not result.roundtrip_bit_exact:
        raise click.ClickException("The reverted model differs from the original; the round trip is not bit-exact.")


def _print_summary(result) -> None:
    click.echo(f"Forgetting {', '.join(result.forget_classes)} on {result.test_texts} test notes")
    echo_table(
        [
            ("forget F1", f"{result.forget_f1_before:.4f}", f"{result.forget_f1_after:.4f}"),
            ("retain macro-F1", f"{result.retain_macro_f1_before:.4f}", f"{result.retain_macro_f1_after:.4f}"),
            ("retain accuracy", f"{result.retain_accuracy_before:.4f}", f"{result.retain_accuracy_after:.4f}"),
            ("retain macro-F1, all texts", f"{result.retain_macro_f1_all_texts_before:.4f}", f"{result.retain_macro_f1_all_texts_after:.4f}"),
        ],
        headers=("metric", "before", "after"),
    )
    click.echo("")
    echo_table(
        [
            ("parameters modified", f"{result.params_modified:,} ({result.params_modified_fraction:.4%}), {result.tokens} embedding rows + head"),
            ("patch size", f"{result.patch_bytes:,} bytes in {result.patch_dir}"),
            ("round trip", "bit-exact" if result.roundtrip_bit_exact else "DIFFERS"),
            ("fine-tune", "cached" if result.classifier_cached else f"{result.finetune_seconds:.1f} s"),
            ("create", f"{result.create_seconds:.1f} s"),
            ("apply", f"{result.apply_seconds:.3f} s"),
            ("evaluate (before + after)", f"{result.evaluate_seconds:.1f} s"),
            ("revert", f"{result.revert_seconds:.3f} s"),
            ("total", f"{result.total_seconds:.1f} s"),
        ],
        headers=("step", "result"),
    )


@click.command()
@_recipe_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write the classifier to.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already exists.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def finetune(encoder, data, finetune_epochs, finetune_lr, max_length, seed, output, overwrite, no_progress):
    """Fine-tune an encoder into a specialty classifier on prepared notes (the demo's base model).

    Trains on the train split and reports accuracy on the validation split.
    """
    from steu_patch.demo import finetune_recipe

    recipe = _recipe(encoder, data, finetune_epochs, finetune_lr, max_length, seed)
    result = finetune_recipe(recipe, output, overwrite=overwrite, show_progress=not no_progress)
    accuracy = "n/a" if result.eval_accuracy is None else f"{result.eval_accuracy:.4f}"
    click.echo(f"Saved the classifier to {result.output_dir} in {result.seconds:.1f} s (validation accuracy {accuracy}).")
