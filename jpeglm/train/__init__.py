"""Training: pretrain an unmodified LlamaForCausalLM on token shards with DeepSpeed ZeRO.

config.py (TrainConfig, ModelConfig), data.py (torch datasets over shards), distributed.py
(process and DeepSpeed setup), loop.py (`train()`). `python -m jpeglm.train` and
`deepspeed --module jpeglm.train` run the `jpeglm train` command (jpeglm/cli/train.py).
"""
