"""python -m vos.eval --dataset-root DIR --layout davis2016|davis2017 --split dev --results DIR [--csv-dir DIR]"""

import argparse
import sys
import warnings

from vos.eval.davis import evaluate_dataset, format_table, write_csvs
from vos.utils import VosError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vos.eval", description=__doc__)
    ap.add_argument("--dataset-root", required=True)
    ap.add_argument("--layout", choices=["davis2016", "davis2017"], required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--results", required=True, help="folder with <seq>/<frame>.png predictions")
    ap.add_argument("--csv-dir", help="where to write the CSVs (default: the results folder)")
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            table, rows = evaluate_dataset(a.dataset_root, a.layout, a.split, a.results, a.workers)
    except VosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_csvs(a.csv_dir or a.results, table, rows)
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
