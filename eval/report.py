"""The evaluation report: report.json, report.md and a self-contained report.html.

`write_report(results, out_dir)` takes the results the harness builds, an `EvalResults` record
(eval/records.py, whose field help documents every key) or its JSON form, and writes
- report.json: `results.to_json()`, with `files` (the written file names) set;
- report.md: the headline table (system x setting -> FID), the detail table (failure rate, bits per
  byte, tokens per image, seconds per image), reconstruction floors, the settings;
- fid_vs_ratio.png: FID against prompt ratio, one line per system, floors as dashed lines;
- report.html: the same tables, the plot and the completion strips, every picture embedded as a
  base64 PNG so the one file can be mailed or opened anywhere.

The tables read the records' attributes, never keys by name, so they cannot ask for a key nobody
writes. Missing numbers are None and shown as "n/a" with their reason; nothing here raises on them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jpeglm.config import atomic_write_text
from jpeglm.eval.records import EvalResults, SettingRow

UNCOND = "unconditional"


# ------------------------------------------------------------------------------------------------
# pictures


def prompt_view(real: np.ndarray, ratio: float | None, shown: np.ndarray | None = None) -> np.ndarray:
    """What the model was shown: the real image where the prompt shows it, the rest grey, a red
    line just past the cut. `shown`: the HxW bool mask of the codec's prompt (`codec.prompt_mask`),
    so a cut that ends inside a row (JPEG's half rows) is drawn as the step it is; without it, the
    top round(h * ratio) rows."""
    out = np.full_like(real, 128)
    if not ratio:
        return out
    h = real.shape[0]
    if shown is None:
        shown = np.zeros(real.shape[:2], bool)
        shown[: round(h * ratio)] = True
    shown = np.asarray(shown, bool)
    if shown.shape != real.shape[:2]:
        raise ValueError(f"prompt mask {shown.shape} does not match the picture {real.shape[:2]}")
    out[shown] = real[shown]
    near = np.zeros_like(shown)  # unshown pixels next to a shown one (below it, or right of it)
    near[1:] |= shown[:-1]
    near[:, 1:] |= shown[:, :-1]
    out[near & ~shown] = (220, 40, 40)
    if shown.all():
        out[h - 1] = (220, 40, 40)  # the whole picture: the line at its bottom edge
    return out


def _fit(a: np.ndarray, size: int) -> Image.Image:
    im = Image.fromarray(np.asarray(a, dtype=np.uint8))
    return im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR)


def make_strip(rows: list[dict], tile: int = 128, gap: int = 4) -> np.ndarray:
    """One completion strip: a row per prompt with `prompt | sample 1..k | real`.

    rows: [{"prompt": HxWx3 uint8, "samples": [HxWx3 uint8, ...], "real": HxWx3 uint8 | None,
    "failed": [bool per sample]}]. Failed samples get a red frame. Returns uint8 HxWx3."""
    if not rows:
        raise ValueError("make_strip needs at least one row")
    k = max(len(r["samples"]) for r in rows)
    cols = 2 + k
    head = 18
    w = cols * tile + (cols + 1) * gap
    h = head + len(rows) * (tile + gap) + gap
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    labels = ["prompt"] + [f"sample {i + 1}" for i in range(k)] + ["real"]
    for c, text in enumerate(labels):
        draw.text((gap + c * (tile + gap) + 4, 3), text, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = head + r * (tile + gap)
        tiles = [row["prompt"]] + list(row["samples"]) + [None] * (k - len(row["samples"])) + [row.get("real")]
        failed = list(row.get("failed") or [False] * len(row["samples"]))
        for c, a in enumerate(tiles):
            if a is None:
                continue
            x = gap + c * (tile + gap)
            canvas.paste(_fit(a, tile), (x, y))
            if 1 <= c <= len(failed) and failed[c - 1]:
                draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(230, 0, 0), width=3)
    return np.asarray(canvas)


def _png_b64(path_or_array) -> str:
    if isinstance(path_or_array, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(path_or_array).save(buf, "PNG")
        data = buf.getvalue()
    else:
        data = Path(path_or_array).read_bytes()
    return base64.b64encode(data).decode("ascii")


def plot_fid(results: EvalResults, path: Path) -> Path | None:
    """FID vs prompt ratio per system (unconditional drawn at ratio 0); floors as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drew = False
    ticks = sorted({r.prompt_ratio or 0.0 for s in results.systems for r in s.rows})
    for sys_ in results.systems:
        pts = [(r.prompt_ratio or 0.0, r.fid) for r in sys_.rows if r.fid is not None and r.cfg_scale is None]
        if not pts:
            continue
        pts.sort()
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=sys_.name)
        drew = True
    for fl in results.floors:
        if fl.rfid is not None:
            ax.axhline(fl.rfid, linestyle="--", linewidth=1, color="grey")
            ax.annotate(f"{fl.codec} reconstruction (rFID)", (0.0, fl.rfid), fontsize=7, color="grey",
                        xytext=(2, 2), textcoords="offset points")
            drew = True
    if not drew:
        plt.close(fig)
        return None
    if ticks:
        ax.set_xticks(ticks, ["uncond." if t == 0 else f"{t:g}" for t in ticks])
    return save_fid_plot(results, fig, ax, path, "prompt ratio (share of the picture given to the model)",
                         "FID against prompt ratio")


def save_fid_plot(results: EvalResults, fig, ax, path: Path, xlabel: str, title: str) -> Path:
    """Label an FID plot (y: FID; the title gets the sample-count note), save it to `path`
    atomically and close it; shared by every FID plot of the report."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (lower is better)")
    n = results.fid.get("n_note", "")
    ax.set_title(title + (f" ({n})" if n else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# tables


def _fmt(v, nd: int = 2, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def settings_order(results: EvalResults) -> list[str]:
    seen = []
    for s in results.systems:
        for r in s.rows:
            if r.setting not in seen:
                seen.append(r.setting)
    # ratios ascending, unconditional last
    return sorted(seen, key=lambda k: (k == UNCOND, k))


def _headline(results: EvalResults) -> tuple[list[str], list[list[str]]]:
    cols = settings_order(results)
    header = ["system"] + [f"FID {c}" for c in cols] + ["bits/byte", "decode failures", "JPEG XL bits/byte"]
    body = []
    for s in results.systems:
        by = {r.setting: r for r in s.rows}
        fails = [r.failure_rate for r in s.rows if r.failure_rate is not None]
        cells = [s.name]
        for c in cols:
            r = by.get(c)
            cells.append("n/a" if r is None else _fid_cell(r))
        jxl = _fmt(s.jxl_bpb, 3) if s.jxl_bpb is not None else ("not measured" if s.jxl_reason else "n/a")
        cells += [_fmt(s.bpb, 3), _fmt(float(np.mean(fails)), pct=True) if fails else "n/a", jxl]
        body.append(cells)
    return header, body


def _fid_cell(row: SettingRow) -> str:
    """FID, with its bootstrap standard deviation when the run computed one (fid_bootstrap > 0)."""
    cell = _fmt(row.fid)
    return f"{cell} ± {_fmt(row.fid_std)}" if row.fid_std is not None and row.fid is not None else cell


def _details(results: EvalResults) -> tuple[list[str], list[list[str]]]:
    header = ["system", "setting", "FID", "n", "precision", "recall", "decode failures", "tokens / image", "s / image",
              "note"]
    body = []
    for s in results.systems:
        if s.error and not s.rows:
            body.append([s.name, "-", "n/a", "0", "n/a", "n/a", "n/a", "n/a", "n/a", s.error])
        for r in s.rows:
            note = r.fid_reason or ""
            if r.decoded_frame_rate is not None:
                note = (note + "; " if note else "") + f"decodable frames {_fmt(r.decoded_frame_rate, pct=True)}"
            if r.fvd is not None or r.fvd_reason:
                fvd = f"FVD {_fmt(r.fvd)}" if r.fvd is not None else r.fvd_reason
                note = (note + "; " if note else "") + fvd
            body.append([
                s.name, r.setting, _fid_cell(r), str(r.n_samples), _fmt(r.precision, 3), _fmt(r.recall, 3),
                _fmt(r.failure_rate, pct=True), _fmt(r.tokens_per_image, 0),
                _fmt(r.seconds_per_image, 3), note,
            ])
    return header, body


def _floors(results: EvalResults) -> tuple[list[str], list[list[str]]]:
    header = ["codec", "PSNR (dB)", "rFID", "bytes / image", "n", "note"]
    body = [[f.codec, _fmt(f.psnr), _fmt(f.rfid), _fmt(f.bytes_per_image, 0), str(f.n), f.rfid_reason or ""]
            for f in results.floors]
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _settings_lines(results: EvalResults) -> list[str]:
    fid = results.fid
    lines = [f"- FID: {fid.get('network', '?')} (sha256 {fid.get('network_sha256', '?')[:16]}...), "
             f"backend {fid.get('backend', '?')}, resize: {fid.get('resize', '?')}"]
    if fid.get("versions"):
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in fid["versions"].items()))
    for k, v in (results.settings or {}).items():
        lines.append(f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    lines += [f"- note: {n}" for n in results.notes]
    return lines


# ------------------------------------------------------------------------------------------------
# the report


def strip_files(results: EvalResults | dict, out: Path) -> list[tuple[str, str, Path]]:
    """(system, setting, file) of every completion strip that exists (paths relative to `out`)."""
    results = EvalResults.from_json(results)
    found = []
    for s in results.systems:
        for strip in s.strips:
            p = Path(strip.path)
            p = p if p.is_absolute() else out / p
            if p.is_file():
                found.append((s.name, strip.setting, p))
    return found


def render_markdown(results: EvalResults | dict, out: Path, tables: dict | None = None) -> str:
    """report.md's text; strips and the plot are linked relative to `out` (only those that exist there).
    `results`: the record or its JSON form (e.g. a report.json read back)."""
    results = EvalResults.from_json(results)
    tables = tables or {"headline": _headline(results), "details": _details(results), "floors": _floors(results)}
    md = [f"# {results.title}", "", results.summary, "",
          "## FID by system and setting (lower is better)", "",
          _md_table(*tables["headline"]), "", "## Details", "", _md_table(*tables["details"]), ""]
    if results.floors:
        md += ["## Reconstruction floors (encode -> decode, no model)", "", _md_table(*tables["floors"]), ""]
    plot = (results.files or {}).get("plot")
    if plot and (out / plot).is_file():
        md += [f"![FID against prompt ratio]({plot})", ""]
    cfg_plot = (results.files or {}).get("cfg_plot")
    if cfg_plot and (out / cfg_plot).is_file():  # class-conditional systems (eval/conditional.py)
        md += ["## Class-balanced FID against the guidance scale", "", f"![FID against cfg_scale]({cfg_plot})", ""]
    strips = strip_files(results, out)
    if strips:
        md += ["## Completion strips: prompt | samples | real", "",
               "The prompt column shows what the model was given (grey below the red line); a red frame marks a "
               "sample whose decode failed.", ""]
        md += [f"**{name} - {setting}**\n\n![{name} {setting}]({p.relative_to(out) if p.is_relative_to(out) else p})\n"
               for name, setting, p in strips]
    md += ["## Settings", "", *_settings_lines(results), ""]
    return "\n".join(md)


def write_report(results: EvalResults | dict, out_dir: str | os.PathLike) -> dict:
    """Write report.json, report.md, fid_vs_ratio.png and report.html into `out_dir`; returns
    {"json", "md", "html", "plot"} -> path (plot None when there is no number to draw).
    `results`: an EvalResults (its `files` is set) or its JSON form (left as it is)."""
    results = EvalResults.from_json(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = results.title
    plot = plot_fid(results, out / "fid_vs_ratio.png")
    from jpeglm.eval.conditional import plot_fid_vs_cfg

    cfg_plot = plot_fid_vs_cfg(results, out / "fid_vs_cfg.png")
    results.files = {"json": "report.json", "md": "report.md", "html": "report.html", "plot": plot.name if plot else None}
    if cfg_plot:
        results.files["cfg_plot"] = cfg_plot.name
    atomic_write_text(out / "report.json", json.dumps(results.to_json(), indent=2, default=str) + "\n")

    tables = {"headline": _headline(results), "details": _details(results), "floors": _floors(results)}
    atomic_write_text(out / "report.md", render_markdown(results, out, tables))

    parts = [f"<h1>{html.escape(title)}</h1>"]
    if results.summary:
        parts.append(f"<p class='summary'>{html.escape(results.summary)}</p>")
    parts += ["<h2>FID by system and setting (lower is better)</h2>", _html_table(*tables["headline"])]
    if plot:
        parts.append(f"<img alt='FID against prompt ratio' src='data:image/png;base64,{_png_b64(plot)}'>")
    if cfg_plot:
        parts.append(f"<img alt='FID against cfg_scale' src='data:image/png;base64,{_png_b64(cfg_plot)}'>")
    parts += ["<h2>Completion strips: prompt | samples | real</h2>",
              "<p>The prompt column shows what the model was given (grey below the red line); "
              "a red frame marks a sample whose decode failed.</p>"]
    for name, setting, p in strip_files(results, out):
        parts.append(f"<h3>{html.escape(name)} - {html.escape(setting)}</h3>"
                     f"<img alt='strip' src='data:image/png;base64,{_png_b64(p)}'>")
    parts += ["<h2>Details</h2>", _html_table(*tables["details"])]
    if results.floors:
        parts += ["<h2>Reconstruction floors (encode -> decode, no model)</h2>", _html_table(*tables["floors"])]
    parts += ["<h2>Settings</h2><ul>"] + [f"<li>{html.escape(x[2:])}</li>" for x in _settings_lines(results)] + ["</ul>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}"
             "img{max-width:100%;display:block;margin:0.5em 0}.summary{font-size:1.1em}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_text(out / "report.html", page)
    return {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html", "plot": plot}
