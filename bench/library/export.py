"""Export a finished library run as the results table snakescope ships (workflow/resources/results_library.tsv).

    python bench/library/export.py WORKDIR [OUT_TSV]

WORKDIR is where bench/run_matrix.sh ran bench/library/config.yaml: its leaderboard and each dataset's
fingerprint become library rows (snakescope.library.library_rows). Sorted, so a re-export of the same run
is identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from snakescope.io import read_json, write_table
from snakescope.library import SHIPPED_LIBRARY, library_rows


def main(workdir: Path, out: Path) -> None:
    leaderboard = pd.read_csv(workdir / "results/summary/leaderboard.tsv", sep="\t")
    fingerprints = {name: read_json(workdir / f"results/{name}/convert/fingerprint.json")
                    for name in leaderboard["dataset"].unique()}
    rows = library_rows(leaderboard, fingerprints).sort_values(["task", "dataset", "model", "seed"])
    write_table(rows, out)
    print(f"{len(rows)} runs on {rows['dataset'].nunique()} datasets -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else SHIPPED_LIBRARY)
