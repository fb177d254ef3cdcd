"""The data verbs: ``nasseg verify``, ``nasseg predict``, ``nasseg evaluate``."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.cli.errors import user_errors

__all__ = ["verify", "predict", "evaluate"]


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@user_errors
def verify(data: Path) -> None:
    """Check every case of the data set folder DATA; print every problem, one line each."""
    from nasseg.data.verify import verify_dataset

    problems = verify_dataset(data)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo(f"{data}: no problems found")
    click.echo(f"next: nasseg search --data {data}")


@click.command()
@click.argument("trained", type=click.Path(path_type=Path))
@click.option("--input", "inputs", required=True, type=click.Path(path_type=Path),
              help="An image file, or a folder of them (CASE_0000.nii.gz per channel, or CASE.png).")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overlap", type=click.FloatRange(0, 0.95), default=0.5, show_default=True)
@click.option("--mirror", is_flag=True, help="Average over flipped copies (test-time augmentation).")
@click.option("--device", default="auto", show_default=True)
@click.option("--label-format", type=click.Choice(["auto", "png", "tiff"]), default="auto",
              show_default=True,
              help="Networks trained on large images: label files as PNG or tiled TIFF (auto: "
                   "TIFF above 16 Mpx).")
@user_errors
def predict(trained: Path, inputs: Path, output: Path, overlap: float, mirror: bool,
            device: str, label_format: str) -> None:
    """Segment images with the network trained in TRAINED (a `nasseg train` folder)."""
    from nasseg.inference.predict import predict_path

    files = predict_path(trained, inputs, output, overlap, mirror, device,
                         progress=lambda line: click.echo(f"  {line}", err=True),
                         label_format=label_format)
    click.echo(f"predicted {len(files)} case(s) into {output}")
    click.echo(f"next: nasseg evaluate --pred {output} --ref LABELS_FOLDER")


@click.command()
@click.option("--pred", required=True, type=click.Path(path_type=Path), help="Predictions folder.")
@click.option("--ref", required=True, type=click.Path(path_type=Path), help="References folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Summary JSON [default: PRED/evaluation.json].")
@click.option("--num-classes", type=click.IntRange(min=2), default=None)
@user_errors
def evaluate(pred: Path, ref: Path, out: Path | None, num_classes: int | None) -> None:
    """Dice, IoU and HD95 per class and case between two folders of label files."""
    from nasseg.evaluation.folders import evaluate_folders, write_evaluation

    result = evaluate_folders(pred, ref, num_classes)
    out = out or pred / "evaluation.json"
    write_evaluation(result, out)
    s = result["summary"]
    click.echo(f"{len(result['cases'])} case(s): mean Dice {s['mean_dice']:.3f}, mean IoU "
               f"{s['mean_iou']:.3f}, mean HD95 {s['mean_hd95']:.2f}")
    p = result["pooled"]
    click.echo(f"all pixels: mIoU (every class) {p['miou']:.3f}, accuracy {p['accuracy']:.3f}, "
               f"score {p['score']:.3f}")
    click.echo(f"summary: {out}")
