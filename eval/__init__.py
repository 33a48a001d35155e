"""Evaluation (installed as `jpeglm.eval`): one protocol for every system.

config.py (EvalConfig, FidSettings), harness.py (`evaluate()`: samples, FID, bits per byte, floors),
records.py (the typed records report.json and manifest.json are), fid.py (TF-Inception pool3 FID),
fvd.py (FVD with a user-supplied I3D), report.py (report.json/md/html, strips, plot). The
`jpeglm eval` and `jpeglm fid` commands are jpeglm/cli/eval.py and fid.py.
"""
