"""The records `jpeglm eval` writes, typed: report.json and each setting's manifest.json.

Each field's help text documents its JSON key. The harness builds these records, report.py renders
from them (attribute access, so it cannot read a key nobody writes), and `to_json` writes exactly
their fields, so the documented keys and the written keys cannot drift apart (as the floors'
`bytes_per_image`, documented as `tokens_per_image`, once did). A number that could not be computed
is None, with its reason in the matching `*_reason` / `error` field.

`Record.from_json(data)` reads the JSON form back (report.py takes either); keys it does not know are
left out, because scripts extend report.json with their own (results/pets/publish.py adds each
system's `training`). No torch.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TypeVar

R = TypeVar("R", bound="Record")


def _f(default, text: str):
    if callable(default):
        return field(default_factory=default, metadata={"help": text})
    return field(default=default, metadata={"help": text})


class Record:
    """Shared behaviour of the records: checked updates, JSON out and back."""

    def update(self, **values) -> None:
        """Set fields by name; an unknown name is a TypeError, never a silent new attribute."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(unknown)}")
        for k, v in values.items():
            setattr(self, k, v)

    def to_json(self) -> dict:
        """The JSON form: every field, nested records as dicts."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[R], data: dict | R) -> R:
        if isinstance(data, cls):
            return data
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value, item = data[f.name], _record_item(hints[f.name])
            if item is not None and value is not None:
                value = [item.from_json(v) for v in value]
            kwargs[f.name] = value
        return cls(**kwargs)


def _record_item(tp) -> type[Record] | None:
    """R for an annotation list[R] with R a Record, else None."""
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp) or (None,)
        if isinstance(arg, type) and issubclass(arg, Record):
            return arg
    return None


# ------------------------------------------------------------------------------------------------
# report.json


@dataclass
class SettingRow(Record):
    """One system under one setting (a prompt ratio, or unconditional)."""

    setting: str = _f("", "'ratio=R' or 'unconditional'")
    prompt_ratio: float | None = _f(None, "share of the picture the prompts show; None for unconditional")
    prompt_cut: dict | None = _f(None, "the codec's prompt cut at this ratio (codec.prompt_region): the rule (JPEG: "
                                 "half_rows, the release's) and the picture region the prompts show; None unconditional")
    seed: int | None = _f(None, "seed of the setting's first sample (sample i uses seed + i), the same for every system")
    n_samples: int = _f(0, "samples drawn")
    fid: float | None = _f(None, "FID of the samples that decoded (repaired ones included) against the held-out reals")
    fid_std: float | None = _f(None, "bootstrap standard deviation of the FID (only with fid_bootstrap > 0)")
    fid_n: int | None = _f(None, "images in the FID (decoded samples; all their frames for video)")
    fid_reason: str = _f("", "why there is no FID, or the small-N note of the FID network")
    precision: float | None = _f(None, "improved precision (Kynkaanniemi et al. 2019, k=3, pool3 features): share of "
                                 "decoded samples inside the held-out images' k-NN manifold")
    recall: float | None = _f(None, "improved recall (k=3): share of held-out images inside the samples' k-NN manifold")
    pr_reason: str = _f("", "why there is no precision / recall")
    failure_rate: float | None = _f(None, "share of samples whose decode failed (left out of the FID)")
    repaired_rate: float | None = _f(None, "share of samples the codec repaired (kept in the FID)")
    tokens_per_image: float | None = _f(None, "mean tokens per sample, prompt + new tokens")
    seconds_per_image: float | None = _f(None, "sampling wall-clock seconds per sample")
    decoded_frame_rate: float | None = _f(None, "video: decoded frames / expected frames over the samples")
    fvd: float | None = _f(None, "video: FVD against the real clips (only with i3d_weights)")
    fvd_reason: str = _f("", "video: why there is no FVD")
    samples_dir: str = _f("", "folder of this setting's PNGs, samples.npz and manifest.json")
    traceback: str | None = _f(None, "the last frames of the traceback when sampling failed")
    cfg_scale: float | None = _f(None, "class-balanced settings: the classifier-free guidance scale; None otherwise")
    classes: list | None = _f(None, "class-balanced settings: the class names, in sample order (samples_per_class each)")


@dataclass
class StripRef(Record):
    """A completion strip picture."""

    setting: str = _f("", "the setting it shows")
    path: str = _f("", "the PNG, relative to the eval's output folder")


@dataclass
class SystemResult(Record):
    """One system: its rows, strips and whole-system numbers."""

    name: str = _f("", "the system's name in the config")
    checkpoint: str = _f("", "the checkpoint it was loaded from")
    codec: dict | None = _f(None, "the checkpoint's codec config {name, params}")
    media_kind: str | None = _f(None, "'image' or 'video'")
    error: str | None = _f(None, "why the system has no rows (could not load, no held-out data), else None")
    bpb: float | None = _f(None, "bits per byte of the held-out items' symbol streams under the model")
    bpp: float | None = _f(None, "bits per pixel (pixels of the codec's decoded picture)")
    nll_per_item: float | None = _f(None, "mean NLL (nats) of one held-out item")
    tokens_per_image: float | None = _f(None, "mean tokens of one whole held-out item (BOS and EOS included)")
    bpb_error: str | None = _f(None, "why bpb could not be computed")
    jxl_bpb: float | None = _f(None, "JPEG XL lossless recompression (cjxl --lossless_jpeg=1) of the held-out JPEG "
                               "files: 8 * its bytes / modelled bytes, beside bpb")
    jxl_bytes_per_image: float | None = _f(None, "mean cjxl --lossless_jpeg=1 file size of one held-out item (bytes)")
    jxl_reason: str = _f("", "why there is no JPEG XL figure ('not measured: ...')")
    rows: list[SettingRow] = _f(list, "one row per setting")
    strips: list[StripRef] = _f(list, "completion strips")


@dataclass
class FloorResult(Record):
    """The reconstruction floor of one codec: encode -> decode of the held-out set, no model."""

    codec: str = _f("", "label: the codec's name (and the system it came from)")
    config: dict | None = _f(None, "the codec config {name, params}")
    psnr: float | None = _f(None, "mean PSNR (dB) of the reconstructions that decoded")
    rfid: float | None = _f(None, "FID of the reconstructions against the reals")
    rfid_reason: str = _f("", "why there is no rFID, or the small-N note")
    n: int = _f(0, "held-out items encoded")
    decode_failures: int = _f(0, "reconstructions that failed to decode")
    bytes_per_image: float | None = _f(None, "mean size of one item's symbol stream, in bytes")


@dataclass
class EvalResults(Record):
    """report.json."""

    title: str = _f("jpeglm evaluation", "the config's title")
    created: str = _f("", "UTC time the run started")
    summary: str = _f("", "one line: the lowest FID per setting")
    fid: dict = _f(dict, "the FID network's settings (jpeglm.eval.fid.FID.settings()) + n_real (held-out images) "
                   "and n_note (samples per setting)")
    systems: list[SystemResult] = _f(list, "one entry per system of the config")
    floors: list[FloorResult] = _f(list, "reconstruction floors: each system's codec once, then floor_codecs")
    notes: list = _f(list, "caveats printed under the tables")
    skipped_inputs: list = _f(list, "held-out files that could not be read: {path, reason}")
    settings: dict = _f(dict, "the protocol, by readable names (held-out folders, items, sampler, seeds, code version)")
    files: dict | None = _f(None, "the report's files, relative to the output folder: json, md, html, plot (None without a plot), "
                            "cfg_plot (FID against cfg_scale; only with class-conditional systems)")


# ------------------------------------------------------------------------------------------------
# OUT/systems/<name>/<setting>/manifest.json


@dataclass
class SampleEntry(Record):
    """One written sample."""

    file: str = _f("", "its PNG (the first frame for video) in the setting's folder")
    seed: int = _f(0, "its sampling seed")
    prompt_index: int | None = _f(None, "index of its held-out prompt; None unconditional")
    class_index: int | None = _f(None, "class-balanced settings: its class id (the row's `classes` names it); None otherwise")
    status: str = _f("", "decode report: ok | repaired | failed")
    reason: str = _f("", "the decode report's reason")
    n_tokens: int = _f(0, "prompt + new tokens")


@dataclass
class DecodeFailure(Record):
    """A sample whose decode failed."""

    index: int = _f(0, "index into `samples`")
    reason: str = _f("", "why")


@dataclass
class SamplesManifest(Record):
    """manifest.json of one system under one setting."""

    system: str = _f("", "the system's name")
    codec: dict | None = _f(None, "its codec config")
    prompt_ratio: float | None = _f(None, "the setting's prompt ratio; None unconditional")
    prompt_cut: dict | None = _f(None, "the prompt cut rule and the picture region the prompts show "
                                 "(codec.prompt_region); None unconditional")
    num_samples: int = _f(0, "samples written")
    base_seed: int = _f(0, "the eval's seed")
    sampler: dict = _f(dict, "the sampler settings shared by every system (seeds are per sample)")
    fid: dict = _f(dict, "the FID network's settings")
    code: dict = _f(dict, "jpeglm's version and git commit")
    samples: list[SampleEntry] = _f(list, "every sample, in file order")
    decode_failures: list[DecodeFailure] = _f(list, "the samples whose decode failed")


RECORDS: tuple[type[Record], ...] = (SettingRow, StripRef, SystemResult, FloorResult, EvalResults, SampleEntry,
                                     DecodeFailure, SamplesManifest)

__all__ = [c.__name__ for c in RECORDS] + ["Record", "RECORDS"]

