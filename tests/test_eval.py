"""The eval harness and report: stand-in systems with known answers, then the real modules.

Stand-ins (`FakeSystem`) return the held-out images themselves (FID ~0), the images under heavy
noise (FID clearly higher) or nothing decodable (a row with failure rate 1, not a crash). The
end-to-end test runs three tiny random Llamas through jpeglm.sample / jpeglm.codecs unchanged.
Each FID costs one 2048x2048 eigen-solve (seconds on 2 cores), so settings are kept few.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from jpeglm.eval.config import EvalConfig
from jpeglm.cli.eval import run
from jpeglm.eval.harness import Drawn, bits_per_byte, evaluate
from jpeglm.eval.report import make_strip, prompt_view, write_report
from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.config import ConfigError, load_config
from jpeglm.tokenizer import ByteTokenizer

SIZE = 32


class FakeSystem:
    """A 'model' that answers prompt i with held-out image i plus noise (or fails to decode)."""

    def __init__(self, reals, noise: float, fail: bool = False, bpb_factor: float = 0.5):
        self.codec = JpegCodec(JpegParams(size=SIZE))
        self.reals, self.noise, self.fail, self.bpb_factor = reals, noise, fail, bpb_factor
        self.tok = ByteTokenizer()

    def sample(self, prompts, num_samples, seed):
        """Sample k has seed `seed + k`; a prompt is answered by the held-out image it was cut from (the
        harness passes the prompts of a chunk of jobs), an unconditional sample by image `seed % n`."""
        n = len(self.reals)
        if prompts is not None:
            streams = [self.codec.encode(Image.fromarray(r)) for r in self.reals]
            which = [next(j for j, s in enumerate(streams) if s.startswith(bytes(p))) for p in prompts]
            idx = [(which[pi], pi) for pi in range(len(prompts)) for _ in range(num_samples)]
        else:
            idx = [((seed + k) % n, None) for k in range(num_samples)]
        out = []
        for k, (j, pi) in enumerate(idx):
            rng = np.random.default_rng(seed + k)
            base = self.reals[j].astype(np.float64)
            img = np.clip(base + rng.normal(0, self.noise, base.shape), 0, 255).astype(np.uint8) if self.noise else \
                self.reals[j].copy()
            status = "failed" if self.fail else "ok"
            out.append(Drawn(np.zeros_like(img) if self.fail else img, status, "bad scan" if self.fail else "",
                             seed + k, pi, 100, {}))
        return out

    def token_ids(self, symbols):
        return self.tok.encode(symbols, bos=True, eos=True)

    def nll(self, ids):
        return (len(ids) - 1) * math.log(256) * self.bpb_factor


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("heldout")
    for i, im in enumerate(photos):
        im.save(d / f"img_{i:02d}.png")
    (d / "zz_broken.png").write_bytes(b"\x89PNG broken")
    return d


def _reals(folder):
    from jpeglm.eval.harness import load_heldout_images

    return load_heldout_images(str(folder), 6, SIZE)[0]


def test_config_rejects_bad_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("systems: [{name: a, checkpoint: x}]\nimages: /x\nprompt_ratio: [0.5]\n")
    with pytest.raises(ConfigError, match="prompt_ratio"):
        load_config(EvalConfig, p)
    p.write_text("systems: [{name: a, checkpoint: x, codec: jpeg}]\n")
    with pytest.raises(ConfigError, match="codec"):
        load_config(EvalConfig, p)
    with pytest.raises(ConfigError, match="prompt ratios"):
        load_config(EvalConfig, None, ["prompt_ratios=[1.5]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(EvalConfig, None, ["systems=[{name: a, checkpoint: x}, {name: a, checkpoint: y}]"])
    cfg = load_config(EvalConfig, None, ["sampler.top_k=0", "num_samples=3"])
    assert cfg.sampler.top_k == 0 and cfg.num_samples == 3 and cfg.prompt_ratios == [0.25, 0.5, 0.75]


def test_every_shipped_eval_config_validates():
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "eval").glob("*.yaml"))
    assert files, "configs/eval/ has no config"
    for f in files:
        cfg = load_config(EvalConfig, f)
        assert cfg.systems and cfg.images


def test_bits_per_byte_formula(heldout):
    reals = _reals(heldout)[:2]
    sys_ = FakeSystem(reals, 0, bpb_factor=0.5)
    res = bits_per_byte(sys_, reals)
    streams = [sys_.codec.encode(r) for r in reals]
    # nll = (len(ids)-1) ln256 / 2 with len(ids) = bytes + 2  ->  bits = 4 (bytes + 1)
    expect = sum(4 * (len(s) + 1) for s in streams) / sum(len(s) for s in streams)
    assert res["bpb"] == pytest.approx(expect, rel=1e-12)
    assert res["bpp"] == pytest.approx(sum(4 * (len(s) + 1) for s in streams) / (2 * SIZE * SIZE), rel=1e-12)
    assert res["tokens_per_image"] == pytest.approx(np.mean([len(s) + 2 for s in streams]))


def test_strip_and_prompt_view():
    real = np.full((32, 32, 3), 200, np.uint8)
    pv = prompt_view(real, 0.5)
    assert (pv[:16] == 200).all() and (pv[17:] == 128).all()
    strip = make_strip([{"prompt": pv, "samples": [real, real], "real": real, "failed": [False, True]}], tile=40)
    assert strip.shape == (18 + 40 + 8, 4 * 40 + 5 * 4, 3)
    x = 4 + 2 * (40 + 4)  # the failed sample's tile has a red frame
    assert tuple(strip[18, x + 10]) == (230, 0, 0)


def test_prompt_view_shades_exactly_the_mcus_the_codec_prompt_keeps():
    from jpeglm.codecs.jpeg import JpegCodec

    codec = JpegCodec()  # 256x256: 16 MCU rows of 16; 0.6 keeps 19 half rows = 9.5 rows = 152 MCUs
    real = np.full((256, 256, 3), 200, np.uint8)
    pv = prompt_view(real, 0.6, codec.prompt_mask(0.6, (256, 256)))
    kept = (pv == 200).all(-1)
    assert kept.sum() == 152 * 16 * 16 and kept[:144].all() and kept[144:160, :128].all()
    assert not kept[144:, 128:].any() and not kept[160:].any()
    red = (pv == (220, 40, 40)).all(-1)
    assert red[144, 128:].all() and red[160, :128].all() and red[144:160, 128].all()  # a step, not a line at 154
    assert (pv[161:] == 128).all() and (pv[145:160, 129:] == 128).all()
    with pytest.raises(ValueError, match="does not match"):
        prompt_view(real, 0.6, codec.prompt_mask(0.6, (128, 128)))
    from jpeglm.eval.harness import _prompt_shown
    from jpeglm.eval.setting import _strip_rows

    shown = _prompt_shown(codec, 0.6, [real])  # what the harness hands the setting's strip: the codec's mask
    assert np.array_equal(shown, codec.prompt_mask(0.6, (256, 256)))
    store = SimpleNamespace(media=lambda i: real)
    plan = SimpleNamespace(classes=(), ratio=0.6, per_prompt=1, n=1)
    cfg = SimpleNamespace(strip_prompts=1, strip_samples=1)
    assert (_strip_rows(store, np.zeros(1, bool), plan, [real], cfg, shown)[0]["prompt"] == pv).all()


def test_report_writes_three_formats_with_embedded_images(tmp_path):
    strip = tmp_path / "strips" / "a.png"
    strip.parent.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(strip)
    results = {
        "title": "t", "summary": "A wins", "fid": {"network": "net", "network_sha256": "ab" * 32, "resize": "tf1",
                                                  "backend": "fid-helper", "versions": {"torch": "x"}},
        "systems": [
            {"name": "A", "bpb": 1.5, "rows": [
                {"setting": "ratio=0.5", "prompt_ratio": 0.5, "fid": 10.0, "n_samples": 4, "failure_rate": 0.0},
                {"setting": "unconditional", "prompt_ratio": None, "fid": 30.0, "n_samples": 4, "failure_rate": 0.25}],
             "strips": [{"setting": "ratio=0.5", "path": "strips/a.png"}]},
            {"name": "B|x", "error": "could not load: boom", "rows": [], "strips": []},
        ],
        "floors": [{"codec": "jpeg", "psnr": 30.0, "rfid": 5.0, "n": 4}],
        "settings": {"seed": 0},
    }
    files = write_report(results, tmp_path)
    data = json.loads(files["json"].read_text())
    assert data["systems"][0]["rows"][0]["fid"] == 10.0
    md = files["md"].read_text()
    assert "| A | 10.00 | 30.00 | 1.500 | 12% |" in md  # mean failure rate of the rows
    assert "B\\|x" in md and "could not load: boom" in md and "fid_vs_ratio.png" in md
    page = files["html"].read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) == 2  # the plot and the strip, both inline
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "src='strips" not in page and "A wins" in page
    with Image.open(files["plot"]) as im:
        assert im.size[0] > 400


def test_harness_with_stand_ins_ranks_systems_and_survives_failures(tmp_path, heldout):
    reals = _reals(heldout)
    cfg = EvalConfig(
        systems=[{"name": "perfect", "checkpoint": "-"}, {"name": "noisy", "checkpoint": "-"},
                 {"name": "broken", "checkpoint": "-"}, {"name": "missing", "checkpoint": str(tmp_path / "nope")}],
        images=str(heldout), out=str(tmp_path / "out"), num_images=6, image_size=SIZE, prompt_ratios=[0.5],
        unconditional=True, num_samples=1, num_unconditional=6, device="cpu", strip_prompts=2, strip_samples=1,
    )
    fakes = {"perfect": FakeSystem(reals, 0), "noisy": FakeSystem(reals, 90), "broken": FakeSystem(reals, 0, fail=True)}
    res = evaluate(cfg, systems=fakes)
    by = {s["name"]: s for s in res["systems"]}
    perfect = {r["setting"]: r for r in by["perfect"]["rows"]}
    noisy = {r["setting"]: r for r in by["noisy"]["rows"]}
    assert abs(perfect["ratio=0.5"]["fid"]) < 1e-3  # the samples are the reals themselves
    assert noisy["ratio=0.5"]["fid"] > 50 and noisy["unconditional"]["fid"] > 50
    broken = by["broken"]["rows"]
    assert [r["failure_rate"] for r in broken] == [1.0, 1.0] and all(r["fid"] is None for r in broken)
    assert "0 of 6 samples decoded" in broken[0]["fid_reason"]
    assert by["missing"]["error"].startswith("could not load") and by["missing"]["rows"] == []
    # bpb of the stand-in's nll over the 6 held-out streams: 4 (bytes + 1) bits per stream (see
    # test_bits_per_byte_formula); "> 0" held for any number
    streams = [fakes["perfect"].codec.encode(Image.fromarray(r)) for r in reals]
    assert by["perfect"]["bpb"] == pytest.approx(sum(4 * (len(s) + 1) for s in streams) / sum(len(s) for s in streams))
    assert "perfect" in res["summary"]
    # the first 6 readable images are all it reads: zz_broken.png sorts after them ("== [] or all
    # broken" accepted both outcomes); asked for one more, it is skipped with its reason
    assert res["skipped_inputs"] == []
    from jpeglm.eval.harness import load_heldout_images

    more, _names, skipped = load_heldout_images(str(heldout), 7, SIZE)
    assert len(more) == 6 and [Path(x["path"]).name for x in skipped] == ["zz_broken.png"] and skipped[0]["reason"]
    # files: samples, npz, manifest with seeds and FID provenance; floors; the three report formats
    d = Path(cfg.out) / "systems" / "noisy" / "ratio_0.5"
    npz = np.load(d / "samples.npz")["arr_0"]
    assert npz.shape == (6, SIZE, SIZE, 3) and npz.dtype == np.uint8
    m = json.loads((d / "manifest.json").read_text())
    assert [s["seed"] for s in m["samples"]] == list(range(6)) and m["prompt_ratio"] == 0.5
    assert m["prompt_cut"]["ratio"] == 0.5 and m["prompt_cut"]["rule"]  # the codec's cut, recorded as on main
    assert [r["prompt_cut"] for r in by["noisy"]["rows"] if r["setting"] == "ratio=0.5"] == [m["prompt_cut"]]
    assert len(m["fid"]["network_sha256"]) == 64 and "jpeglm" in m["code"] and m["sampler"]["top_k"] == 50
    mb = json.loads((Path(cfg.out) / "systems" / "broken" / "ratio_0.5" / "manifest.json").read_text())
    assert len(mb["decode_failures"]) == 6
    u = json.loads((Path(cfg.out) / "systems" / "noisy" / "unconditional" / "manifest.json").read_text())
    assert u["samples"][0]["seed"] == 100_000  # the same seeds for every system, disjoint per setting
    assert res["floors"] and res["floors"][0]["psnr"] > 20 and res["floors"][0]["rfid"] is not None
    for f in ("report.json", "report.md", "report.html", "fid_vs_ratio.png", "config.yaml"):
        assert (Path(cfg.out) / f).is_file(), f
    md = (Path(cfg.out) / "report.md").read_text()
    assert "resized the same way" in md
    for link in re.findall(r"!\[[^]]*\]\((strips/[^)]+)\)", md) or ["no strip linked from report.md"]:
        assert (Path(cfg.out) / link).is_file(), link  # the strips shown in report.md exist


@pytest.mark.slow
def test_end_to_end_three_tiny_real_systems(tmp_path, heldout, monkeypatch, capsys):
    """jpeglm eval over three tiny random Llamas with the real sampler, tokenizers and codecs
    (JPEG bytes, JPEG BPE, pixel codes); only checkpoint loading is stood in by monkeypatch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import jpeglm.checkpoint as ck
    from jpeglm.codecs.pixel import PixelCodec, PixelParams
    from jpeglm.tokenizer import BpeTokenizer, CodeTokenizer

    def tiny(vocab):
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                            bos_token_id=1, eos_token_id=2, pad_token_id=3)).eval()

    byte_tok = ByteTokenizer()
    pix = PixelCodec(PixelParams(size=8, eval_size=SIZE))
    code_tok = CodeTokenizer(pix.num_codes)
    jpeg = JpegCodec(JpegParams(size=SIZE))
    bpe_tok = BpeTokenizer.train([jpeg.encode(Image.fromarray(r)) for r in _reals(heldout)], vocab_size=300)
    loaded = {
        "ck-bpe": ck.Loaded(tiny(bpe_tok.vocab_size), bpe_tok, jpeg, {}),
        "ck-jpeg": ck.Loaded(tiny(byte_tok.vocab_size), byte_tok, jpeg, {}),
        "ck-pixel": ck.Loaded(tiny(code_tok.vocab_size), code_tok, pix, {}),
    }
    monkeypatch.setattr(ck, "load_for_inference", lambda path, device="cpu", dtype=None: loaded[Path(path).name])
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"systems:\n  - {{name: jpeg, checkpoint: {tmp_path}/ck-jpeg}}\n  - {{name: pixel, checkpoint: {tmp_path}/ck-pixel}}\n"
        f"images: {heldout}\nnum_images: 4\nimage_size: 64\nprompt_ratios: [0.5]\nunconditional: false\n"
        "num_samples: 1\nsampler: {max_new_tokens: 400, batch_size: 4}\nfloor_codecs: [{name: jpeg, params: {size: 32, quality: 75}}]\n"
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared 2-core machine
    try:
        args = SimpleNamespace(config=str(cfg), set=["systems=" + json.dumps([
            {"name": "jpeg", "checkpoint": f"{tmp_path}/ck-jpeg"}, {"name": "pixel", "checkpoint": f"{tmp_path}/ck-pixel"},
            {"name": "jpeg-bpe", "checkpoint": f"{tmp_path}/ck-bpe"}])], out=str(tmp_path / "out"), device="cpu")
        rc = run(args)
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert rc == 0, out
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    by = {s["name"]: s for s in rep["systems"]}
    assert set(by) == {"jpeg", "pixel", "jpeg-bpe"}
    for name in ("jpeg", "pixel", "jpeg-bpe"):
        row = by[name]["rows"][0]
        assert row["n_samples"] == 4 and row["failure_rate"] == 0.0, row  # constrained: every file decodes
        assert row["fid"] is not None and row["fid"] > 0 and row["tokens_per_image"] > 0
        assert 0 < by[name]["bpb"] < 20
    assert by["pixel"]["tokens_per_image"] == 1 + 8 * 8 + 1  # held-out: BOS + 64 codes + EOS
    assert 1 + 32 < by["pixel"]["rows"][0]["tokens_per_image"] <= 1 + 64 + 1  # prompt (half) + completion
    floors = {f["codec"]: f for f in rep["floors"]}
    assert set(floors) == {"jpeg (jpeg)", "pixel (pixel)", "jpeg"}  # per codec once (jpeg-bpe shares jpeg's)
    assert floors["jpeg"]["psnr"] > floors["jpeg (jpeg)"]["psnr"]  # quality 75 beats quality 25
    assert "report:" in out and "FID ratio=0.5" in out


def test_video_system_scored_on_frames(tmp_path):
    """A video system (AvcCodec) in the same report: FID over frames, decodable-frame rate, FVD
    skipped with its reason, the H.264 reconstruction floor."""
    from jpeglm.codecs.avc import AvcCodec
    from jpeglm.video import builtin_clip, write_video

    vids = tmp_path / "videos"
    vids.mkdir()
    clip = builtin_clip()
    write_video(clip, vids / "a.mp4")
    write_video(clip[:, ::-1].copy(), vids / "b.mp4")
    codec = AvcCodec()

    class FakeVideo:
        def __init__(self):
            self.codec = codec

        def sample(self, prompts, num_samples, seed):
            clips = [codec.prepare(vids / "a.mp4"), codec.prepare(vids / "b.mp4")]
            return [Drawn(clips[i % 2], "repaired", "cut short", seed + i, i, 50,
                          {"decoded_frames": 10, "expected_frames": 15}) for i in range(len(prompts) * num_samples)]

        def token_ids(self, symbols):
            return ByteTokenizer().encode(symbols)

        def nll(self, ids):
            return float(len(ids))

    cfg = EvalConfig(systems=[{"name": "avc", "checkpoint": "-"}], videos=str(vids), out=str(tmp_path / "out"),
                     num_images=2, prompt_ratios=[0.5], unconditional=False, num_samples=1, device="cpu",
                     strip_prompts=1, strip_samples=1)
    res = evaluate(cfg, systems={"avc": FakeVideo()})
    row = res["systems"][0]["rows"][0]
    assert row["decoded_frame_rate"] == pytest.approx(10 / 15)
    assert row["fid"] is not None and row["fid_n"] == 2 * codec.params.frames  # every frame of both clips
    assert row["fvd"] is None and "I3D weights not supplied" in row["fvd_reason"]
    npz = np.load(Path(cfg.out) / "systems" / "avc" / "ratio_0.5" / "samples.npz")["arr_0"]
    assert npz.shape == (2, codec.params.frames, codec.params.height, codec.params.width, 3)
    floor = res["floors"][0]
    assert floor["codec"].startswith("avc") and floor["psnr"] > 25
    assert "decodable frames 67%" in (Path(cfg.out) / "report.md").read_text()


def test_cli_missing_heldout_folder_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"systems: [{{name: a, checkpoint: x}}]\nimages: {tmp_path}/none\nout: {tmp_path}/out\n")
    assert run(SimpleNamespace(config=str(cfg), set=[], out=None, device="cpu")) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run(SimpleNamespace(config=str(tmp_path / "missing.yaml"), set=[], out=None, device="cpu")) == 2
