"""Data prep (installed as `jpeglm.data_prep`): media sources -> codec symbols -> token shards.

sources.py (folders, HF datasets, built-in photos) and webdata.py (WebDataset tars, parquet, fsspec
URLs), pipeline.py (the resumable `prep()`), units.py (work units, pieces and their merge), engines.py
(local processes, Ray), writer.py (chunk files, done markers, manifest) over store.py (a local path or
an fsspec URL), bpe.py (a BPE tokenizer trained on prepared shards).
The `jpeglm prep` and `jpeglm tokenizer train` commands are jpeglm/cli/prep.py and tokenizer.py.
"""
