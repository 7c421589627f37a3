"""The infer.py command line: inference (vos.inference) with test-time adaptation wired in (vos.adapt)."""

USAGE = """Segment every frame of a video from one annotated frame.

  python infer.py --input video.mp4 --mask first_frame.png --out outputs/ [--overlay]
  python infer.py --input frames/ --masks sparse_masks/ --out outputs/
  python infer.py --input video.mp4 --box 120,40,380,300 [--box ...] [--box-frame 0] --out outputs/ --overlay
  python infer.py --dataset-root DAVIS --layout davis2017 --split val --out outputs/
  torchrun --nproc_per_node 2 infer.py --dataset-root ... (sequences are sharded across processes)

Outputs: <out>/<sequence>/<frame>.png palette masks (ids and palette of the input annotation).
--method copy|flow runs a baseline through the same pipeline.
"""

import argparse
import sys
from pathlib import Path

from vos.config import InferConfig, load_config
from vos.utils import VosError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="infer.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("input")
    src.add_argument("--input", help="a video file or a folder of frames")
    src.add_argument("--mask", help="mask PNG of the annotated frame (frame 0 unless --mask-frame)")
    src.add_argument("--mask-frame", help="frame name the --mask belongs to (e.g. 00010)")
    src.add_argument("--masks", help="folder of sparse mask PNGs named like their frames")
    src.add_argument("--box", action="append", help="x0,y0,x1,y1: no mask file, an object in this box (GrabCut); "
                     "repeat for several objects (ids 1, 2, ...)")
    src.add_argument("--points", nargs="+", metavar="X,Y[,LABEL]",
                     help="clicks: label 1 (default) = object, 0 = not; refine one --box, or seed an object alone")
    src.add_argument("--box-frame", type=int, default=0, help="index of the frame the --box/--points are on")
    src.add_argument("--dataset-root", help="a DAVIS-2016/2017 or YouTube-VOS root: run every sequence of --split")
    src.add_argument("--layout", choices=["davis2016", "davis2017", "youtubevos"], default="davis2017")
    src.add_argument("--split", default="val")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--method", default="hodor", help="hodor (the model), copy or flow")
    ap.add_argument("--checkpoint", help="model checkpoint (default: the bundled checkpoints/default.pt)")
    ap.add_argument("--config", help="an inference YAML (see configs/infer/)")
    ap.add_argument("--overlay", action="store_true", help="also write <out>/<seq>_overlay.mp4")
    ap.add_argument("--probs", action="store_true", help="also write soft probabilities (<out>/<seq>_probs/*.npz)")
    ap.add_argument("--youtubevos-zip", help="with a YouTube-VOS dataset: also write the server submission zip")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. window=5 short_side=480)")
    a = ap.parse_args(argv)
    try:
        from vos.adapt import runner as make_runner
        from vos.inference.run import jobs_for_dataset, jobs_for_input, shard, wait_for_all_ranks

        cfg = load_config(InferConfig, a.config, a.overrides)
        if bool(a.input) == bool(a.dataset_root):
            raise VosError("give exactly one of --input (a video or frame folder) or --dataset-root")
        if (a.box or a.points) and a.input:  # build the first mask, save it beside the outputs, use it
            from vos.inference.run import prompt_mask_from_clicks

            a.mask, a.mask_frame = prompt_mask_from_clicks(a.input, a.box or [], a.points or [], a.box_frame, a.out)
            print(f"first mask from the box/clicks: {a.mask} (inspect or correct it, then pass it as --mask)")
        jobs = (jobs_for_dataset(a.dataset_root, a.layout, a.split) if a.dataset_root
                else jobs_for_input(a.input, a.mask, a.mask_frame, a.masks))
        runner = make_runner(cfg, a.method, a.checkpoint)
        print(runner.precision)
        out = Path(a.out)
        total_frames = total_s = 0.0
        for job in shard(jobs):
            r = runner.run(job, out, a.overlay, a.probs)
            total_frames, total_s = total_frames + r["frames"], total_s + r["seconds"]
        if a.youtubevos_zip and wait_for_all_ranks() == 0:  # one zip, once every rank has written its sequences
            from vos.data import list_sequences
            from vos.eval.youtubevos import export_youtubevos

            listed = {s.name: s.eval_frames or s.frame_names for s in list_sequences(a.dataset_root, "youtubevos",
                                                                                      a.split)}
            export_youtubevos(out, listed, a.youtubevos_zip)
    except VosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {int(total_frames)} frames to {out} ({total_frames / max(total_s, 1e-9):.1f} frames/s)")
    return 0

