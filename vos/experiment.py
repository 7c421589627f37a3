"""Experiments as configs: `python -m vos.experiment configs/experiments/NAME.yaml [...]`.

Each file is one row of RESULTS.md. The runner trains (resuming an interrupted run, skipping a finished one),
segments the evaluation split with infer.py's runner, evaluates it with vos.eval, and writes
results/experiments/NAME.txt (the command, the J&F table, per-video scores) and the row's figures into
results/experiments.csv (one line per experiment, replaced when re-run). Runs go to runs/NAME, outputs to
outputs/experiments/NAME: all three folders under the repository, wherever the command is run from.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import sys
from pathlib import Path

import numpy as np

from vos.config import CONFIG_DIR, ExperimentConfig, InferConfig, TrainConfig, data_path, load_config, to_dict
from vos.utils import VosError, atomic_path

ROOT = CONFIG_DIR.parent
RESULTS = ROOT / "results"
RUNS = ROOT / "runs"
OUTPUTS = ROOT / "outputs"


def _experiment_file(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else CONFIG_DIR / "experiments" / f"{name}.yaml"


def _train(name: str, e) -> Path:
    """The experiment's run checkpoint, trained (or resumed) to its last step."""
    from vos.checkpoint import load_checkpoint
    from vos.train.loop import train

    cfg = load_config(TrainConfig, ROOT / e.train, list(e.train_overrides) + [f"out_dir={RUNS / name}"])
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    if ckpt.is_file() and int(load_checkpoint(ckpt)["step"]) >= cfg.optim.steps:
        print(f"{name}: {ckpt} is complete; not training again")
        return ckpt
    ckpt = train(cfg, resume=str(ckpt) if ckpt.is_file() else None)
    step = int(load_checkpoint(ckpt)["step"])
    if step < cfg.optim.steps:  # stopped by a signal: never evaluate a half-trained model as the experiment's
        raise VosError(f"{name}: training stopped at step {step} of {cfg.optim.steps}; run the same command to "
                       f"resume from {ckpt}")
    return ckpt


def _load(path: Path) -> "DictConfig":  # noqa: F821
    """An experiment's config, checked: at most one source of weights, and one for the model."""
    e = load_config(ExperimentConfig, path)
    sources = [k for k in ("train", "checkpoint", "average", "ensemble") if e[k]]
    if len(sources) > 1:
        raise VosError(f"experiment {path.stem}: give one source of weights, not {' and '.join(sources)}")
    if e.method == "hodor" and not sources:
        raise VosError(f"experiment {path.stem}: the model needs weights: give train, checkpoint, average or ensemble")
    if e.method != "hodor" and sources:
        raise VosError(f"experiment {path.stem}: method {e.method} is a baseline and takes no weights ({sources[0]})")
    return e


def checkpoint_of(name: str, done: set[str] | None = None, chain: tuple[str, ...] = ()) -> Path | None:
    """Run the experiments it depends on, then produce its checkpoint (None for baselines). name: an
    experiment's name under configs/experiments/ or its YAML's path."""
    from vos.checkpoint import export

    done = set() if done is None else done
    path = _experiment_file(name)
    name = path.stem
    if name in chain:
        raise VosError(f"experiment {name}: `after` runs in a cycle: {' -> '.join(chain + (name,))}")
    e = _load(path)
    for dep in e.after:
        if dep not in done:
            checkpoint_of(dep, done, chain + (name,))
            done.add(dep)
    if e.train:
        return _train(name, e)
    if e.average or e.ensemble:
        dst = RUNS / name / ("average.pt" if e.average else "ensemble.pt")
        srcs = [str(checkpoint_of(d, done, chain + (name,))) for d in e.average or e.ensemble]
        export(srcs, str(dst), ensemble=bool(e.ensemble))
        return dst
    if e.checkpoint:
        p = Path(e.checkpoint)
        p = p if p.is_absolute() else ROOT / p
        if p.is_dir():
            p = p / "checkpoint.pt"
        if not p.is_file():
            raise VosError(f"experiment {name}: checkpoint {p} not found (list the experiment that makes it in `after`)")
        return p
    return None


def run(name: str) -> dict:
    from vos.adapt import runner as make_runner
    from vos.data import composites, list_sequences
    from vos.eval import evaluate_dataset, format_table, per_video_spread
    from vos.inference.run import jobs_for_dataset

    path = _experiment_file(name)
    name = path.stem
    e = _load(path)
    ckpt = checkpoint_of(str(path))
    derived = e.dataset in (composites.NAME, composites.TWINS)
    dataset = str(composites.ensure(e.data_root, e.dataset)) if derived else data_path(e.data_root, e.dataset)
    runner = make_runner(load_config(InferConfig, None, list(e.infer_overrides)), e.method, str(ckpt) if ckpt else None,
                         progress=False)
    print(runner.precision)
    out = OUTPUTS / "experiments" / name
    if e.layout == "sparse_folder":
        return _run_areas(name, path, e, ckpt, dataset, runner, out)
    frames = seconds = 0.0
    adapt_seconds: list[float] = []
    prompt_ious = []
    jobs = jobs_for_dataset(dataset, e.layout, e.split)
    seqs = {s.name: s for s in list_sequences(dataset, e.layout, e.split)}
    if e.prompt_frame:
        _move_prompts(jobs, seqs, e.prompt_frame)
    for job in jobs:
        if e.prompt == "box":
            prompt_ious.append(_box_prompt(job, out / "_prompts"))
        r = runner.run(job, out, progress=False)
        frames, seconds = frames + r["frames"], seconds + r["seconds"]
        adapt_seconds.append(r["adapt_seconds"])
    table, rows = evaluate_dataset(dataset, e.layout, e.split, out)
    spread = per_video_spread(rows)
    jf = spread["per video"]
    row = {"experiment": name, "J&F": 100 * table["J&F-Mean"], "J": 100 * table["J-Mean"], "F": 100 * table["F-Mean"],
           "per-video J&F std": spread["std"], "min video J&F": spread["min"],
           "frames/s": frames / max(seconds, 1e-9), "s/video": seconds / len(jobs),
           "adapt s/video": sum(adapt_seconds) / len(jobs), "date": datetime.date.today().isoformat()}
    text = (f"python -m vos.experiment {_shown(path)}\n"
            f"{e.description}\ncheckpoint: {_shown(ckpt) if ckpt else e.method}; {runner.precision}; {int(frames)} frames "
            f"at {row['frames/s']:.1f} frames/s; "
            f"{row['s/video']:.1f} s per video (of which adaptation {row['adapt s/video']:.1f} s, "
            f"at most {max(adapt_seconds, default=0.0):.1f} s)\n\n"
            f"{format_table(table)}\n\nper video J&F: " + ", ".join(f"{k} {v:.1f}" for k, v in jf.items()) + "\n")
    if runner.adapt is not None:
        text += f"test-time adaptation: {to_dict(runner.cfg.adapt)}; " \
                f"training {runner.adapt.precision}\n"
    if e.prompt_frame:
        before = _iou_before(jobs, seqs, e.prompt_frame, out)
        row["IoU before the annotation"] = 100 * float(np.mean(list(before.values())))
        text += (f"mean IoU over the frames before the annotated frame {e.prompt_frame}: "
                 + ", ".join(f"{k} {100 * v:.1f}" for k, v in before.items())
                 + f"; mean {row['IoU before the annotation']:.1f}\n")
    if prompt_ious:
        row["first-mask IoU"] = 100 * float(np.mean(prompt_ious))
        text += "first-mask IoU (box -> GrabCut vs ground truth): " + ", ".join(f"{100 * v:.1f}" for v in prompt_ious) \
            + f"; mean {row['first-mask IoU']:.1f}\n"
    return _save(name, text, row)


def _run_areas(name: str, path: Path, e, ckpt, dataset: str, runner, out: Path) -> dict:
    """Videos with sparse masks only (images/<seq>/, masks/<seq>/ with each object's first mask, e.g. Cutie's
    judo): no J&F, but each object's area in every frame after it is given, the smallest of them, and how
    object 1's area at the last frame compares with its given area: whether each object is kept, and whether
    one object takes the others' pixels."""
    from vos.data import read_mask
    from vos.inference.run import jobs_for_input

    from vos.eval import object_areas

    row = {"experiment": name, "date": datetime.date.today().isoformat()}
    text = (f"python -m vos.experiment {_shown(path)}\n"
            f"{e.description}\ncheckpoint: {_shown(ckpt) if ckpt else e.method}; {runner.precision}\n")
    for seq in e.split.split(","):
        job, = jobs_for_input(str(Path(dataset) / "images" / seq), None, None, str(Path(dataset) / "masks" / seq))
        runner.run(job, out, progress=False)
        pred = sorted((out / job.name).glob("*.png"))
        names, maps = [q.stem for q in pred], [read_mask(q)[0] for q in pred]
        given = {}
        for fname, mpath in job.prompts.items():
            ids = read_mask(mpath, size=maps[0].shape)[0]
            for k in set(np.unique(ids).tolist()) - {0}:
                given.setdefault(k, (names.index(fname), int((ids == k).sum())))
        stats = object_areas(maps, given)
        text += f"\n{seq}: object area (px) per frame, from the frame it is given\n"
        for k, (t0, a0) in sorted(given.items()):
            text += f"  object {k} (given at frame {t0}, {a0} px): " + " ".join(map(str, stats["areas"][k])) + "\n"
        mins = stats["min"]
        row[f"{seq}: min object px after given"] = float(min(mins.values()))
        row[f"{seq}: object 1 area at last frame / given"] = stats["ratio1"]
        text += (f"  smallest area of any object after it is given: {min(mins.values())} px (per object: "
                 + ", ".join(f"{k}: {v}" for k, v in mins.items()) + f"); object 1 at the last frame: "
                 f"{stats['ratio1']:.2f}x its given area\n")
    return _save(name, text, row)


def _move_prompts(jobs: list, seqs: dict, frame: int) -> None:
    """Start each job from the annotation of `frame` instead of its first annotation."""
    for job in jobs:
        s = seqs[job.name]
        if frame not in s.annotations:
            raise VosError(f"{job.name} has no annotation at frame {frame}")
        job.prompts = {s.frame_names[frame]: s.annotations[frame]}


def _iou_before(jobs: list, seqs: dict, frame: int, out: Path) -> dict[str, float]:
    """Per video: mean foreground IoU over the frames before the annotated one."""
    from vos.data import read_mask
    from vos.eval import foreground_iou

    return {job.name: float(np.mean([foreground_iou(seqs[job.name].read_mask(t)[0],
                                             read_mask(out / job.name / f"{seqs[job.name].frame_names[t]}.png")[0] > 0)
                                     for t in range(frame)])) for job in jobs}


def _box_prompt(job, folder: Path) -> float:
    """Replace the job's first mask by the GrabCut mask of each object's bounding box; returns its IoU with
    the annotation (all objects together)."""
    from vos.data import open_frames, read_mask, write_mask
    from vos.inference.prompts import mask_from_prompts

    (name, path), = list(job.prompts.items())[:1]
    gt, _ = read_mask(path, binary_255_is_object=job.binary_255)
    frames = open_frames(job.frames_path)
    boxes = []
    for k in sorted(set(np.unique(gt)) - {0, 255}):
        ys, xs = np.nonzero(gt == k)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    ids = mask_from_prompts(frames[frames.names.index(name) if name else 0], boxes)
    folder.mkdir(parents=True, exist_ok=True)
    write_mask(folder / f"{job.name}.png", ids)
    job.prompts = {name: folder / f"{job.name}.png"}
    job.binary_255 = False
    from vos.eval import foreground_iou

    return foreground_iou(gt, ids > 0)


def _shown(path: Path) -> Path:
    path = Path(path)
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _save(name: str, text: str, row: dict) -> dict:
    """Write results/experiments/NAME.txt and the row of results/experiments.csv; print the text."""
    (RESULTS / "experiments").mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / "experiments" / f"{name}.txt") as tmp:
        tmp.write_text(text)
    _record(row)
    print(text)
    return row


def _record(row: dict) -> None:
    """Replace the row's line of results/experiments.csv. Experiments run side by side: the read-modify-write holds
    an exclusive lock, or one of two runners finishing together loses the other's row."""
    table = RESULTS / "experiments.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table.parent / ".experiments.csv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = list(csv.DictReader(table.open())) if table.is_file() else []
        rows = [r for r in rows if r["experiment"] != row["experiment"]] + [
            {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in row.items()}]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(table) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(sorted(rows, key=lambda r: r["experiment"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vos.experiment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", help="experiment YAMLs (or names under configs/experiments/)")
    a = ap.parse_args(argv)
    try:
        for name in a.experiments:
            run(name)
    except VosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
