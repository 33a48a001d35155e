"""Class labels for `jpeglm prep --labels`: which class each input item is, decided once in the driver.

Spellings of `--labels`:
- `folders`: the first sub-folder of the item under `--input` is its class (torchvision's and
  `datasets`' ImageFolder layout: `cat/001.jpg`); items directly in `--input` have no label.
- `column:NAME`: a dataset column (`--input` a saved dataset, `imagefolder:DIR` or `hf:NAME`); a
  `ClassLabel` column keeps its names and ids, any other column's distinct values become the
  classes (sorted); a missing value (None, or -1 in a ClassLabel) is no label.
- `file:PATH`: a CSV file with a header holding the columns `file` and `label` (others ignored);
  `file` is the item's path relative to `--input`, or just its file name when that is unique.
  Rows naming no input item are reported (`Labels.unmatched`), the rest are used.

Class ids: `folders` and `file:` number the distinct names in sorted order; a `ClassLabel`
column keeps its own order. An item without a label is skipped by the pipeline with the reason.
The result is plain data (picklable: it travels to the workers) and has a fingerprint that goes
into the prep's settings, so a resumed prep with other labels is refused instead of mixed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from jpeglm.data_prep.sources import FileSource, HFSource, Item, SourceError

NO_LABEL = "no label"  # the start of every skip reason of an unlabelled item (one kind in the summary)


@dataclass(frozen=True)
class Labels:
    """The classes of one prep: `names` in id order, `of_key` item key -> class id."""

    spec: str
    names: tuple[str, ...]
    of_key: dict[str, int] = field(repr=False)
    why_missing: str = "no label"  # the skip reason for an item not in `of_key`
    unmatched: tuple[str, ...] = ()  # label-file rows whose `file` names no input item

    def fingerprint(self) -> dict:
        """What decides the records: the spec, the names and the whole mapping (hashed)."""
        h = hashlib.sha256(json.dumps(sorted(self.of_key.items()), separators=(",", ":")).encode()).hexdigest()
        return {"spec": self.spec, "names": list(self.names), "mapping_sha256": h}


def parse_spec(spec: str) -> tuple[str, str]:
    """`folders` | `column:NAME` | `file:PATH` -> (kind, argument); ValueError on anything else."""
    kind, sep, arg = str(spec).partition(":")
    if kind == "folders" and not sep:
        return kind, ""
    if kind in ("column", "file") and sep and arg:
        return kind, arg
    raise ValueError(f"--labels must be folders, column:NAME or file:PATH, got {spec!r}")


def resolve_labels(spec: str, source, items: list[Item]) -> Labels:
    """The label of every item of `source` (in `items`), as `spec` says."""
    kind, arg = parse_spec(spec)
    if kind == "folders":
        return _from_folders(spec, source, items)
    if kind == "column":
        return _from_column(spec, arg, source, items)
    return _from_file(spec, Path(arg), items)


def _from_folders(spec: str, source, items: list[Item]) -> Labels:
    if not isinstance(source, FileSource):
        raise SourceError("--labels folders needs a folder --input (class sub-folders); for a dataset use column:NAME")
    first = {it.key: it.key.split("/", 1)[0] for it in items if "/" in it.key}
    names = tuple(sorted(set(first.values())))
    if not names:
        raise SourceError("--labels folders: no item sits in a sub-folder of --input (expected CLASS/IMAGE files)")
    ids = {n: i for i, n in enumerate(names)}
    return Labels(spec, names, {k: ids[n] for k, n in first.items()}, "no label (not inside a class sub-folder)")


def _from_column(spec: str, name: str, source, items: list[Item]) -> Labels:
    if not isinstance(source, HFSource):
        raise SourceError(f"--labels column:{name} needs a dataset --input (a saved dataset, imagefolder:DIR, hf:NAME)")
    values, class_names = source.read_column(name)
    of_key: dict[str, int] = {}
    if class_names is not None:  # a ClassLabel: its names and ids as they are
        names = tuple(str(n) for n in class_names)
        for it in items:
            v = values[int(it.ref)]
            if v is not None and 0 <= int(v) < len(names):
                of_key[it.key] = int(v)
    else:
        present = {it.key: str(values[int(it.ref)]) for it in items if values[int(it.ref)] is not None}
        names = tuple(sorted(set(present.values())))
        ids = {n: i for i, n in enumerate(names)}
        of_key = {k: ids[v] for k, v in present.items()}
    if not names:
        raise SourceError(f"--labels column:{name}: the column holds no labels")
    return Labels(spec, names, of_key, f"no label (column {name} is empty)")


def _from_file(spec: str, path: Path, items: list[Item]) -> Labels:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is no part of "file"
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise ValueError(f"--labels file:{path}: the header must have the columns file and label "
                                 f"(has {', '.join(reader.fieldnames or [])})")
            rows = [(str(r["file"] or "").strip().replace("\\", "/"), str(r["label"] or "").strip()) for r in reader]
    except OSError as e:
        raise ValueError(f"--labels file:{path}: cannot read it ({e.strerror or e})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"--labels file:{path}: not a CSV file ({e})") from None
    keys = {it.key for it in items}
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(posixpath.basename(k), []).append(k)
    chosen: dict[str, str] = {}
    unmatched = []
    for file, label in rows:
        if not file or not label:
            continue
        key = file if file in keys else (by_name[file][0] if len(by_name.get(file, ())) == 1 else None)
        if key is None:
            unmatched.append(file)
            continue
        if chosen.setdefault(key, label) != label:
            raise ValueError(f"--labels file:{path}: {file} is listed with two labels ({chosen[key]!r}, {label!r})")
    names = tuple(sorted(set(chosen.values())))
    if not names:
        raise ValueError(f"--labels file:{path}: no row names an input item ({len(unmatched)} rows name none)")
    ids = {n: i for i, n in enumerate(names)}
    return Labels(spec, names, {k: ids[v] for k, v in chosen.items()}, f"no label (not in {path.name})",
                  tuple(unmatched))


__all__ = ["NO_LABEL", "Labels", "parse_spec", "resolve_labels"]
