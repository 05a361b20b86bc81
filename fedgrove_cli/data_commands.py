"""The commands around data: `split` one table into site files to try a federation, and `predict` with a
trained model."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from fedgrove_cli.console import console, fail


class Split(str, Enum):
    iid = "iid"
    dirichlet = "dirichlet"


def read_table(path: Path):  # type: ignore[no-untyped-def]
    """A CSV or Parquet file, by its suffix."""
    from fedgrove.sources import DataSource, SourceError, read_source

    try:
        return read_source(DataSource(data=str(path)), base_dir=Path.cwd(), setting="the file argument")
    except SourceError as exc:
        fail(exc.detail)


def split(
    data: Annotated[Path, typer.Argument(help="The table to split: a CSV or Parquet file.")],
    target: Annotated[str, typer.Option(help="The label column (the split keeps its balance, or skews it).")],
    sites: Annotated[int, typer.Option(help="Number of site files.")],
    out: Annotated[Path, typer.Option(help="Folder for site-1.csv ... site-N.csv.")],
    split: Annotated[Split, typer.Option(help="iid (stratified) or dirichlet (label skew).")] = Split.iid,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration; smaller = more skew.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    min_records: Annotated[int, typer.Option(help="Every site gets at least this many records.")] = 10,
) -> None:
    """Split one table into per-site files, to try a federation on one machine."""
    from fedgrove.split import split_table, write_split

    frame = read_table(data)
    try:
        parts = split_table(frame, target=target, sites=sites, split=split.value, alpha=alpha, seed=seed,
                            min_records=min_records)
    except ValueError as exc:
        fail(str(exc))
    paths = write_split(parts, out)
    console.print(f"wrote {len(paths)} site files to {out}; put this in your spec (absolute paths: a relative one "
                  "would start at the spec file's folder):", highlight=False)
    print("sites:")
    for name, path in paths.items():
        print(f"  {name}: {{data: {path.resolve()}}}")


def predict(
    data: Annotated[Path, typer.Argument(help="Records to score: a CSV or Parquet file with the model's columns.")],
    model: Annotated[Path, typer.Option(help="A run's model.pt (its model.json beside it).")],
    id_column: Annotated[str | None, typer.Option(help="A column to carry through, e.g. a record id.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the CSV here instead of to standard output.")] = None,
) -> None:
    """Score records: prediction (a label), its probability, and each label's probability, as CSV."""
    from fedgrove.encoding import MissingColumns, NonNumericCell
    from fedgrove.model_card import ModelFileError
    from fedgrove.predict import PredictionInputError, predict as predict_frame

    frame = read_table(data)
    frame.index = range(1, len(frame) + 1)  # rows as a user counts them: the first record is row 1
    try:
        predictions = predict_frame(model, frame, id_column=id_column)
    except (MissingColumns, NonNumericCell, PredictionInputError, ModelFileError) as exc:
        fail(str(exc))
    if id_column is None:
        predictions.insert(0, "row", predictions.index)
    predictions.to_csv(output if output is not None else sys.stdout, index=False, float_format="%.6f")
    imputed, other = predictions.attrs["imputed"], predictions.attrs["other"]
    notes = []
    if imputed:
        count = sum(imputed.values())
        notes.append(f"imputed {count} empty cell{'s' if count != 1 else ''} as in training ("
                     + ", ".join(f"{column}: {n}" for column, n in imputed.items()) + ")")
    if other:
        count = sum(other.values())
        notes.append(f"counted {count} categor{'ies' if count != 1 else 'y'} unseen in training as other ("
                     + ", ".join(f"{column}: {n}" for column, n in other.items()) + ")")
    for note in notes:
        typer.echo(note, err=True)
