"""jpeglm: byte-level codec language models (JPEG-LM, AVC-LM) and their baselines.

Layers (see DESIGN.md): codecs -> tokenizer -> shards -> Llama -> train -> sample -> eval.
The codec and tokenizer layers import no torch, so `import jpeglm` stays light.
"""

__version__ = "0.1.0"
