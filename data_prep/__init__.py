"""Data prep (installed as `jpeglm.data_prep`): media sources -> codec symbols -> token shards.

sources.py (folders, HF datasets, built-in photos), pipeline.py (the parallel, resumable `prep()`),
writer.py (chunk files, done markers, manifest), bpe.py (a BPE tokenizer trained on prepared shards).
The `jpeglm prep` and `jpeglm tokenizer train` commands are jpeglm/cli/prep.py and tokenizer.py.
"""
