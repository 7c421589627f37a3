"""Typed configs: structured dataclasses + YAML files under configs/ + `key=value` overrides.

Composition: wherever the schema expects a sub-config (a dataclass) and the YAML or an override gives a
string, that string names a file `configs/<key>/<name>.yaml` (or is a path to a YAML file). For example
`model: lite0` in a training config, or `model=hodor_swin_t` on the command line.

Unknown keys are errors that name the closest valid key: a silently ignored typo once broke the reference
implementation's sparse-video training. Choice fields are enums (an unknown value is an error listing the
valid ones) and numeric fields declare their range (`bounded`), both checked when a config is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vos.utils import VosError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(VosError):
    pass


def bounded(default: Any, min: float | None = None, max: float | None = None, above: float | None = None,
            choices: tuple | None = None) -> Any:
    """A field whose value must lie in [min, max] (and be > `above`, and be one of `choices`), checked at load."""
    return field(default=default, metadata={"min": min, "max": max, "above": above, "choices": choices})


class Schedule(StrEnum):
    cosine = "cosine"
    step = "step"
    constant = "constant"


class Trainable(StrEnum):
    all = "all"
    late = "late"  # all but HODOR.param_groups()["early"]: the backbone's stages up to stride 8 stay fixed
    heads = "heads"  # HODOR.param_groups()["heads"]: all but the backbone and FPN

    def frozen(self) -> tuple[str, ...]:
        """The HODOR.param_groups() left fixed."""
        return {"all": (), "late": ("early",), "heads": ("early", "features")}[self.value]


class Regime(StrEnum):
    static = "static"
    composite = "composite"
    merge = "merge"
    sparse = "sparse"
    dense = "dense"


class Overlap(StrEnum):
    less = "less"
    more = "more"


class Similarity(StrEnum):
    dot = "dot"
    l2 = "l2"
    l2_given = "l2_given"  # l2 for the given-frame read (global top-k: where a long key wins most), dot for the carry
    # the given-frame read by the cosine of the attention features themselves (no learned key), dot for the carry
    cosine_given = "cosine_given"


class Layout(StrEnum):
    davis2016 = "davis2016"
    davis2017 = "davis2017"
    youtubevos = "youtubevos"
    sparse_folder = "sparse_folder"  # experiments only: images/<seq>/ + masks/<seq>/ with each object's first mask


class Method(StrEnum):
    hodor = "hodor"
    copy = "copy"
    flow = "flow"


class Prompt(StrEnum):
    mask = "mask"  # the dataset's annotation
    box = "box"  # a GrabCut mask from the annotation's bounding box (what `infer.py --box` does)


class Amp(StrEnum):
    auto = "auto"  # time both precisions once on this machine and keep the faster (vos.utils.precision)
    true = "true"  # bf16 (fp16 on CUDA without bf16)
    false = "false"  # fp32


class Wandb(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


# ----------------------------------------------------------------------------------------------- model
@dataclass
class EncoderConfig:
    layers: int = bounded(2, min=1)


@dataclass
class DecoderConfig:
    layers: int = bounded(2, min=1)
    # Local pixel-mixing block of each decoder layer: "deform" (3x3 deformable conv, the paper's), "conv"
    # (depthwise-separable 3x3 conv, cheap on CPU), "none", or an attention block from vos.model.pixel_blocks.
    pixel_block: str = "conv"
    # A learned check of each past frame's descriptors against the same object's first valid (given) ones: a logit
    # offset per past frame and descriptor (vos.model.hodor.AnchorCheck; starts as a no-op). Off: today's decoder.
    anchor_check: bool = False
    # A learned presence score per object and frame (vos.model.hodor.Presence, SAM 2's object score): is the object
    # in this frame at all? Its log-sigmoid is added to the object's logits (a whole-map gate, learned with a binary
    # loss where masks are known; starts as a no-op). Off: today's decoder.
    presence: bool = False
    # Mask keys per descriptor: each descriptor is read out as this many keys against the pixel embedding and an
    # object's logit is the max over them (an object of several looks: a rider and his bike, a dancer's top and
    # skirt; one mean key matches the dominant look and misses the rest). 1: today's decoder. From a 1-key
    # checkpoint the extra keys start as near copies of its key (vos.checkpoint.init_from): the model unchanged.
    mask_keys: int = bounded(1, min=1)
    # Output at stride 2: each object's stride-4 logits upsampled x2 plus a learned residual from its upsampled
    # probability and the backbone's stride-2 features (edges; vos.model.hodor.Refine, zero-initialised: starts as
    # bilinear upsampling). What the loss and the user see; memory keeps reading stride 4. Off: today's output.
    refine: bool = False


@dataclass
class ShortTermConfig:
    """The short-term path (vos.model.short_term): the last frame's masks carried by local pixel matching, as logit
    offsets learned with the rest of the model. radius 0 = off (the descriptor-only model)."""

    radius: int = bounded(0, min=0)  # matching window radius, in the path's pixels (4 at stride 16: 64 px each way)
    stride: int = bounded(16, choices=(8, 16))  # the path's pixels: 16 or 8 (keys and masks 2x finer, ~4x the pixels)
    key_channels: int = bounded(32, min=4)
    given_topk: int = bounded(0, min=0)  # > 0: also read the given frame's masks, top-k over all its pixels; 0: off
    # each pixel's distance to where the object was a frame ago, an input of the fusion (the locality rule, learned;
    # starts as a no-op)
    distance: bool = False
    # affinity of the path's attention (the local carry and the given-frame read): "dot" (q . k), "l2" (the negative
    # squared distance, STCN's) or "l2_given" (l2 for the given-frame read only): with dot, a key of large norm wins
    # every query's top-k, and the given frame's read in the crossing composite gave the rider's own cells the swing
    # girl's mask (0.55 against 0.02 for his own); "cosine_given": the given-frame read matches the stride-8 attention
    # features by cosine instead of the path's learned keys (their read of the given mask: IoU 0.79 against 0.69)
    similarity: Similarity = Similarity.dot
    # a second read of the given frame, discriminative: a ridge regression fit in closed form on the given frame's
    # stride-16 unit features to its [background, objects] masks, applied to this frame (the target model of FRTM /
    # LWL, a fast "adaptation" inside the step); its scores are inputs of the fusion (zero at initialisation). Fit
    # alone on frozen features, it matched the given masks into later frames better than the top-k read did (IoU
    # 0.795 against 0.726 on val10, 0.573 against 0.530 on the composites); trained, level over two seeds (RESULTS.md,
    # 2026-12-07, forty-sixth session): not adopted
    given_ridge: bool = False
    # > 0: the given-frame read (`given_topk`) also enters each object's logits directly, as g * log(read + 0.05), g a
    # learned gain that starts at this value (0: off; the read then reaches the logits only through the fusion, whose
    # first layer for it starts at zero and stays small: RESULTS.md). Where the read says an object is not (the rhino's
    # rocks: 0.08), its logits drop by up to 3 g
    read_prior: float = bounded(0.0, min=0.0)


@dataclass
class ModelConfig:
    backbone: str = "lite0"  # lite0 | resnet18 | resnet50 | swin_t
    # "package": the weights shipped by a pip package (lite0); "torchvision": torchvision's download (needs a
    # network); a path to a state-dict file; or null for random initialisation.
    backbone_weights: Optional[str] = "package"
    freeze_backbone: bool = False
    channels: int = bounded(96, min=8)  # C: stride-8 feature and descriptor width
    mask_channels: int = bounded(32, min=4)  # stride-4 mask-feature width
    # the stride-8 features also carry the backbone's stride-8 lateral directly (vos.model.hodor.FPN.lateral8, a 1x1
    # conv, zero-initialised: starts as today's FPN): the top-down sum is dominated by the stride-32 semantics, so
    # two objects of one kind side by side (two people) come out nearly alike (mask-averaged cosine 0.98) where the
    # lateral alone still tells them apart (0.66; RESULTS.md, 2026-12-06, thirty-ninth session)
    lateral8: bool = False
    heads: int = bounded(8, min=1)
    ffn_mult: int = bounded(4, min=1)
    # background descriptors = bg_grid ** 2 (SPEC: 3); init_from a coarser checkpoint resizes its cells' queries
    bg_grid: int = bounded(3, min=1)
    dropout: float = bounded(0.0, min=0, max=0.99)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    short_term: ShortTermConfig = field(default_factory=ShortTermConfig)


# ------------------------------------------------------------------------------------------- inference
@dataclass
class AdaptConfig:
    """Test-time adaptation (vos.adapt): fine-tune a copy of the model on the given frame(s) of the video, with the
    training loop's own step, before propagating. On by default; the defaults are the fast preset chosen on val10,
    the composites and judo (RESULTS.md, "Fast test-time adaptation"): ~13 s per model on 2 CPU cores, whatever
    the video's length (it trains on the given frames only)."""

    steps: int = bounded(40, min=0)  # 0 = off
    lr: float = bounded(3e-4, min=0)  # peak learning rate
    warmup: int = bounded(3, min=0)  # steps of linear warm-up, then `schedule` over the remaining steps
    schedule: Schedule = Schedule.cosine
    batch_size: int = bounded(2, min=1)
    size: int = bounded(192, min=32)  # square training crops at the internal resolution
    # pseudo-clips of the given frame; the rest: cycles over the video's other frames
    static_weight: float = bounded(1.0, min=0, max=1)
    # of the pseudo-clips, this share are merged ones: the given objects pasted over their own frame, crossing the
    # objects or leaving the frame and coming back (unlabelled look-alikes or more objects: training's merge_leave)
    merge_weight: float = bounded(0.0, min=0, max=1)
    # frames per clip; 4+: run forward and back the way inference runs them (vos.train.cycles.chain_paths)
    clip_len: int = bounded(3, min=3)
    # a budget for the whole adaptation (0 = none): where the steps would not fit, the learning-rate schedule is
    # shortened to end within it (from the measured time per step), with a warning
    seconds: float = bounded(120.0, min=0)
    seed: int = 0
    train: Trainable = Trainable.late  # all | late (the backbone to stride 8 fixed) | heads (backbone and FPN fixed)
    # the adapted weights' share of the final ones, the rest the loaded weights' (a weight-space ensemble, WiSE-FT)
    mix: float = bounded(0.75, min=0, max=1)


@dataclass
class InferConfig:
    # W: recent frames whose descriptors the decoder attends to (besides the given frames); 3, what a four-frame
    # training clip's frames read (RESULTS.md, 2026-12-05); 7 until then
    window: int = bounded(3, min=1)
    anchor_first: bool = True  # keep the annotated frame's descriptors for the whole video
    # pixel memory (XMem's working memory, for the short-term path's given-frame read): every Nth frame's keys and
    # predicted masks join the given frames the read sees, the last `pixel_memory_frames` of them; 0 = given only
    pixel_memory_every: int = bounded(0, min=0)
    pixel_memory_frames: int = bounded(3, min=1)
    # locality rule (vos.inference.locality): each object stays within this fraction of the frame's longer side of
    # where it was in the last frame (its probability x locality_floor beyond), so look-alikes far away do not
    # take it over; 0 = off. The shipped model keeps objects apart by its learned short-term path and runs without
    # it; models without that path (checkpoints/pair.pt) were measured with 0.2
    locality: float = bounded(0.0, min=0, max=1)
    locality_floor: float = bounded(1e-3, min=0, max=1)
    short_side: int = bounded(288, min=0)  # internal resolution (shorter image side); 0 = native resolution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    members: list[int] = field(default_factory=list)  # which models of a multi-model checkpoint run ([] = all)
    amp: Amp = Amp.auto  # auto: the faster of fp32 and bf16, timed once on this machine; true: bf16; false: fp32
    adapt: AdaptConfig = field(default_factory=lambda: AdaptConfig())


# -------------------------------------------------------------------------------------------- training
@dataclass
class DataSource:
    # synthetic | static_folder | coco | davis2016 | davis2017 | youtubevos | composites (vos.data.sources.SOURCES)
    kind: str = "synthetic"
    root: str = ""  # relative to data.root unless absolute
    split: str = "train"
    weight: float = bounded(1.0, min=0)  # sampling weight in a mixture; weights of all sources must sum to 1
    regime: Regime = Regime.static  # static | composite | merge (pseudo-clips from annotated images) | sparse | dense
    # which frame is the one annotated frame: first | middle | random | a JSON file {video: frame name}
    annotated: str = "first"
    max_gap: int = bounded(12, min=1)  # sparse/dense video: other clip frames within this many frames of the annotated one
    # Augmentation table row (vos.data.augment.AUGMENT); "" = the regime's own row. Setting it lets two regimes
    # be compared at equal augmentation, or changes one regime's strength.
    augment: str = ""
    coco_annotations: str = ""  # coco: path to instances_*.json
    # video kinds, regime dense: a folder <video>/<frame>.png of a teacher's masks for every frame (the outputs of
    # `python -m vos.experiment TEACHER`: outputs/experiments/TEACHER; relative to the repository unless absolute).
    # The annotated frame keeps its own mask; the others train with these (distillation, issue 23).
    pseudo_labels: str = ""
    length: int = bounded(64, min=1)  # synthetic: number of generated clips; composites: number of sequences
    # composites: each pasted object flipped left-right where that overlaps the objects below it less (as the
    # validation composites) or more (heavier occlusion to learn from)
    overlap: Overlap = Overlap.less


# Where datasets live: the VOS_DATA environment variable, else ../shared/data (the development machines' copy).
DATA_ROOT = "${oc.env:VOS_DATA,../shared/data}"


@dataclass
class DataConfig:
    root: str = DATA_ROOT  # relative source roots are resolved against this
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    size: list[int] = field(default_factory=lambda: [192, 192])  # training crop (H, W)
    # crop window of the training frames: 1/zoom of a frame's height and width, zoom uniform in [low, high]; with
    # clips of the inference frame's shape (size), zoom 1 is the whole frame at the inference scale
    zoom: list[float] = field(default_factory=lambda: [1.0, 1.6])
    max_objects: int = bounded(3, min=1)
    # frames per training clip: 3 = HODOR's cycles (vos.train.cycles.cycle_paths); more = inference's own chain,
    # forward and back, with the given frame and a window of recent frames in memory (chain_paths)
    clip_len: int = bounded(3, min=3)
    # this share of the steps (a whole batch each) has clips of long_clip_len frames instead: the length of a
    # long chain without giving up the short clips' steps (0 = every clip is clip_len frames)
    long_clip_share: float = bounded(0.0, min=0, max=1)
    long_clip_len: int = bounded(6, min=3)
    workers: int = bounded(0, min=0)


@dataclass
class OptimConfig:
    lr: float = bounded(1e-4, min=0)
    weight_decay: float = bounded(0.01, min=0)
    warmup: int = bounded(100, min=0)
    schedule: Schedule = Schedule.cosine  # cosine | step | constant
    step_milestones: list[int] = field(default_factory=list)
    step_gamma: float = bounded(0.1, above=0)
    steps: int = bounded(1000, min=1)
    batch_size: int = bounded(2, min=1)  # per process
    effective_batch: int = bounded(0, min=0)  # 0 = batch_size * world size; else accumulate gradients to reach it
    clip_grad: float = bounded(1.0, above=0)
    amp: bool = True  # bf16 (or fp16 + GradScaler) on CUDA; bf16 on a CPU with native bf16, else off
    train: Trainable = Trainable.all  # which of HODOR.param_groups() the optimizer moves
    # peak lr of the modules that start as no-ops (their last layer at zero): the short-term path and the decoder's
    # anchor check (0 = lr); fine-tuned into a trained model at the model's lr, the path stays a no-op (offsets
    # <= 0.2 logits after 800 steps: RESULTS.md), and so did the check (offsets < 0.005 after 150 steps); also the
    # readout of decoder.mask_keys > 1 (its keys start as near copies: at the model's lr they stayed copies, cosine
    # 0.9996 after 200 steps), and the stride-2 refinement (decoder.refine)
    short_term_lr: float = bounded(0.0, min=0)
    max_nonfinite: int = bounded(10, min=1)  # stop after this many non-finite losses in a row


@dataclass
class CycleConfig:
    detach_masks: bool = False  # True = the reference code's choice; False = gradients through soft masks
    long_cycles: bool = True  # alternate the 3-frame cycles; False = only [0]->0 and [0]->1->0
    # decoder.presence: the presence loss as the mean of its present and its absent objects' means (absent objects are
    # 1 in 7-13 of the supervised ones); False: one mean over all
    presence_balanced: bool = False
    # chance that a predicted frame leaves an object's mask corrupted (spilt onto the scene or cut) to memory, while
    # the loss wants the truth: robustness to masks that drift over long videos (vos.train.cycles.corrupt_masks)
    memory_noise: float = bounded(0.0, min=0.0, max=1.0)
    # chance that a predicted frame leaves an object's mask with part of another object of its clip, which loses it
    # (ids half-swapped, as when two paths cross), while the loss wants the truth (vos.train.cycles.corrupt_masks)
    memory_swap: float = bounded(0.0, min=0.0, max=1.0)
    # bootstrapped CE (STCN / XMem / Cutie): the cross-entropy over each image's hardest share of pixels, from all
    # pixels at the start down linearly to this share at half of optim.steps (1 = plain CE over all pixels)
    hard_pixels: float = bounded(1.0, above=0.0, max=1.0)
    # weight of a second mask loss on the logits decoded from the descriptors alone (before the short-term path's
    # offsets): descriptors that keep two look-alike objects apart by themselves (0 = off)
    appearance_loss: float = bounded(0.0, min=0.0)
    # weight of a term that pushes apart the mask-averaged stride-8 features of different objects of a frame (cosine
    # above 0.5; vos.train.cycles.separation_loss): objects whose features are alike get alike descriptors and are
    # confused (0 = off)
    separation_loss: float = bounded(0.0, min=0.0)
    # weight of a loss on the short-term path's read of the given frame alone: frame 0's masks read into every later
    # frame with known masks by the path's keys, against that frame's masks (vos.train.cycles.read_loss; needs
    # model.short_term.given_topk; 0 = off)
    read_loss: float = bounded(0.0, min=0.0)
    # chance that a training decode reads an object as absent from the previous frame (the short-term path's carry
    # withheld, as for an object back in view): only the given frame's read and the descriptors can place it
    # (vos.train.cycles.withhold_carry; 0 = off)
    carry_dropout: float = bounded(0.0, min=0.0, max=1.0)
    # weight of the contrastive random walk on each clip's own frames (vos.train.cycles.walk_loss): the stride-8
    # features learn to follow every pixel through the clip, which needs no mask (0 = off)
    walk_loss: float = bounded(0.0, min=0.0)


@dataclass
class LogConfig:
    wandb: Wandb = Wandb.offline  # offline | online | disabled (WANDB_MODE overrides)
    project: str = "vos"
    every: int = bounded(10, min=1)
    image_every: int = bounded(200, min=0)


@dataclass
class ValConfig:
    """Periodic validation J&F during training: inference with `infer` (an InferConfig, as infer.py runs it)."""

    every: int = bounded(0, min=0)  # 0 = no periodic validation
    root: str = "davis2016"  # relative to data.root unless absolute
    layout: Layout = Layout.davis2016
    split: str = "dev"
    max_seqs: int = bounded(0, min=0)  # 0 = all
    # validation measures the model itself: no test-time adaptation unless asked for
    infer: InferConfig = field(default_factory=lambda: InferConfig(adapt=AdaptConfig(steps=0)))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cycles: CycleConfig = field(default_factory=CycleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    val: ValConfig = field(default_factory=ValConfig)
    init_from: str = ""  # checkpoint whose model weights initialise this run (e.g. static -> cycle)
    out_dir: str = "runs/default"
    ckpt_every: int = bounded(200, min=1)
    seed: int = 0
    device: str = "auto"


# ------------------------------------------------------------------------------------------ experiments
@dataclass
class ExperimentConfig:
    """One row of RESULTS.md: train (optional), segment a split, evaluate (`python -m vos.experiment FILE`)."""

    description: str = ""
    after: list[str] = field(default_factory=list)  # experiments (names under configs/experiments) run first
    train: Optional[str] = None  # a training config; its run goes to runs/<experiment name>
    train_overrides: list[str] = field(default_factory=list)
    checkpoint: str = ""  # instead of training: a checkpoint path, or "runs/<name>" of an experiment in `after`
    average: list[str] = field(default_factory=list)  # instead: the weight average of these experiments' runs
    ensemble: list[str] = field(default_factory=list)  # instead: these experiments' runs side by side (run together)
    method: Method = Method.hodor  # hodor | copy | flow
    # mask: the dataset's first-frame annotation; box: a GrabCut mask from the annotation's bounding box
    # (what `infer.py --box` does), as a user without a mask file would start
    prompt: Prompt = Prompt.mask
    prompt_frame: int = bounded(0, min=0)  # start from the annotation of this frame (index) instead of the first one
    infer_overrides: list[str] = field(default_factory=list)
    data_root: str = DATA_ROOT
    # relative to data_root unless absolute; "val10-composites": the multi-object validation composites, and
    # "val10-twins": val10 with a twin of each object (both vos.data.composites), built in data/ of the repository
    # on first use
    dataset: str = "davis2016"
    # davis2016 | davis2017 | youtubevos, or sparse_folder: images/<seq>/ + masks/<seq>/ holding only each
    # object's first mask (no J&F; each object's area per frame is reported); split: comma-separated sequences
    layout: Layout = Layout.davis2016
    split: str = "dev"


# ----------------------------------------------------------------------------------------------- loader
def _fields(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _field_type(schema: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(schema)[name]


def _unknown(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _named_file(group: str, name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    candidate = CONFIG_DIR / group / f"{name}.yaml"
    if not candidate.exists():
        options = sorted(q.stem for q in (CONFIG_DIR / group).glob("*.yaml"))
        raise ConfigError(f"no config '{name}' for '{group}': expected {candidate}. Available: {', '.join(options)}")
    return candidate


def _resolve(data: dict, schema: type, where: str = "") -> dict:
    """Check keys against the schema (recursively) and expand string references to sub-config files."""
    fields = _fields(schema)
    out = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(key, fields, where)
        ftype = _field_type(schema, key)
        if dataclasses.is_dataclass(ftype):
            if isinstance(value, str):
                value = _read_yaml(_named_file(key, value))
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' must be a mapping or the name of a {key} config")
            value = _resolve(value, ftype, f"{where}{key}.")
        elif ftype is Amp and isinstance(value, bool):  # YAML reads `amp: true` as a boolean
            value = "true" if value else "false"
        elif getattr(ftype, "__origin__", None) is list and isinstance(value, list):
            (item_type,) = ftype.__args__
            if dataclasses.is_dataclass(item_type):
                value = [_resolve(v, item_type, f"{where}{key}[{i}].") for i, v in enumerate(value)]
        out[key] = value
    return out


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def _override_tree(cfg: DictConfig, key: str, value: Any) -> dict:
    """The tree that one `key=value` override merges in. A numeric part indexes a list, e.g.
    `data.sources.0.pseudo_labels=...`: the list is rebuilt with that item changed (a merge replaces lists)."""
    parts = key.split(".")
    at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    tree: dict = {}
    if at is None:
        _set_dotted(tree, key, value)
        return tree
    list_key, n, rest = ".".join(parts[:at]), int(parts[at]), ".".join(parts[at + 1:])
    current = OmegaConf.select(cfg, list_key) if list_key else None
    if not OmegaConf.is_list(current):
        raise ConfigError(f"override '{key}': '{list_key}' is not a list, so '{parts[at]}' cannot index it")
    items = OmegaConf.to_container(current, enum_to_str=True)
    if n >= len(items):
        raise ConfigError(f"override '{key}': '{list_key}' has {len(items)} items, so the index must be below "
                          f"{len(items)}")
    if not rest:
        items[n] = value
    elif isinstance(items[n], dict):
        _set_dotted(items[n], rest, value)
    else:
        raise ConfigError(f"override '{key}': item {n} of '{list_key}' is not a mapping with a key '{rest}'")
    _set_dotted(tree, list_key, items)
    return tree


def _merge(cfg: DictConfig, layer: dict) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config value: {e}".splitlines()[0]) from None


def load_config(schema: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Build a config: schema defaults <- YAML file <- `key=value` overrides (values parsed as YAML)."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        cfg = _merge(cfg, _resolve(_read_yaml(Path(path)), schema))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (for example optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        tree = _override_tree(cfg, key.strip(), yaml.safe_load(raw) if raw != "" else "")
        cfg = _merge(cfg, _resolve(tree, schema))
    _check_ranges(cfg, schema)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _check_ranges(cfg: DictConfig, schema: type, where: str = "") -> None:
    """Every `bounded` field within its range (recursively)."""
    for name, f in _fields(schema).items():
        ftype, value = _field_type(schema, name), cfg[name]
        if dataclasses.is_dataclass(ftype):
            _check_ranges(value, ftype, f"{where}{name}.")
        elif getattr(ftype, "__origin__", None) is list and dataclasses.is_dataclass(ftype.__args__[0]):
            for i, item in enumerate(value):
                _check_ranges(item, ftype.__args__[0], f"{where}{name}[{i}].")
        elif f.metadata and value is not None:
            lo, hi, above = f.metadata["min"], f.metadata["max"], f.metadata["above"]
            if (lo is not None and value < lo) or (hi is not None and value > hi) or (above is not None and value <= above):
                bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None
                                                  else "", f"> {above}" if above is not None else "") if b)
                raise ConfigError(f"config value {where}{name}={value} is out of range: it must be {bounds}")
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise ConfigError(f"config value {where}{name}={value} is not allowed: it must be one of "
                                  f"{', '.join(map(str, f.metadata['choices']))}")


def config_from_dict(schema: type, data: dict) -> DictConfig:
    """Rebuild a config saved as a plain dict (e.g. inside a checkpoint), validating its keys."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), _resolve(data, schema))
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config value: {e}".splitlines()[0]) from None
    _check_ranges(cfg, schema)
    OmegaConf.set_struct(cfg, True)
    return cfg


def data_path(data_root: str, path: str) -> str:
    """A dataset path from a config: absolute as given, else under data.root."""
    return path if not path or Path(path).is_absolute() else str(Path(data_root) / path)


def to_dict(cfg: DictConfig) -> dict:
    """Plain Python (choices as strings): what checkpoints and logs store."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    from vos.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg))
