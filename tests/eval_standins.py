"""Stand-ins for the eval tests that run in other processes (torchrun ranks, a run killed with -9).

- `feature_net(path)`: a TorchScript stand-in for the Inception network (same interface: (N,3,299,299)
  in [-1, 1] -> (N, 2048)), milliseconds per image instead of a quarter second; FID, precision and
  recall over it are real computations, only the features are cheaper.
- `StandIn`: a system that answers a prompt with the held-out image it was cut from plus noise
  seeded by the sample's seed (so a sample depends on its seed only, as the real sampler's does);
  it can sleep per sample and log the seeds it drew.

    python tests/eval_standins.py run CONFIG.yaml [--sleep S] [--log FILE]   # evaluate() with StandIn
    python tests/eval_standins.py die                                        # rank 1 leaves, rank 0 waits
    python tests/eval_standins.py sample OUT --prompt A.png B.png            # jpeglm sample, tiny Llama
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def feature_net(path, seed: int = 0) -> str:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.proj = nn.Parameter(torch.randn(3 * 8 * 8, 2048, generator=g) / 8, requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            small = nn.functional.adaptive_avg_pool2d(x, 8).reshape(x.shape[0], -1)
            return torch.relu(small @ self.proj)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script: TorchScript is what FID loads
        torch.jit.script(Net()).save(str(path))
    return str(path)


class StandIn:
    def __init__(self, folder: str, size: int, noise: float = 40.0, sleep: float = 0.0, log: str | None = None):
        from jpeglm.eval.harness import load_heldout_images

        from jpeglm.codecs.jpeg import JpegCodec, JpegParams
        from jpeglm.tokenizer import ByteTokenizer

        self.codec = JpegCodec(JpegParams(size=size))
        self.reals = load_heldout_images(folder, 64, size)[0]
        self.streams = [self.codec.encode(_pil(r)) for r in self.reals]
        self.noise, self.sleep, self.log = noise, sleep, log
        self.tok = ByteTokenizer()

    def sample(self, prompts, num_samples, seed):
        from jpeglm.eval.harness import Drawn

        n = len(self.reals)
        if prompts is not None:
            which = [next(j for j, s in enumerate(self.streams) if s.startswith(bytes(p))) for p in prompts]
            idx = [(which[pi], pi) for pi in range(len(prompts)) for _ in range(num_samples)]
        else:
            idx = [((seed + k) % n, None) for k in range(num_samples)]
        out = []
        for k, (j, pi) in enumerate(idx):
            time.sleep(self.sleep)
            rng = np.random.default_rng(seed + k)
            img = np.clip(self.reals[j] + rng.normal(0, self.noise, self.reals[j].shape), 0, 255).astype(np.uint8)
            status = "repaired" if (seed + k) % 5 == 0 else "ok"
            out.append(Drawn(img, status, "", seed + k, pi, 100 + (seed + k) % 7, {}))
            if self.log:
                with open(self.log, "a") as f:
                    f.write(f"{seed + k}\n")
        return out

    def token_ids(self, symbols):
        return self.tok.encode(symbols, bos=True, eos=True)

    def nll(self, ids):
        return float(len(ids) - 1) * 3.0 + (sum(ids[:50]) % 11) / 10


def _pil(a):
    from PIL import Image

    return Image.fromarray(a)


def run(config: str, sleep: float, log: str | None) -> int:
    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.harness import evaluate

    from jpeglm.config import load_config

    cfg = load_config(EvalConfig, config)
    systems = {s.name: StandIn(cfg.images, cfg.image_size, noise=20.0 + 30 * i, sleep=sleep, log=log)
               for i, s in enumerate(cfg.systems)}
    res = evaluate(cfg, systems=systems)
    print(json.dumps({"rank": os.environ.get("RANK", "0"), "report": res.get("report_files")}))
    return 0


def sample(out: str, prompts: list[str]) -> int:
    """`jpeglm sample`'s run() over a tiny random Llama (checkpoint loading stood in), 2 samples per prompt."""
    import argparse
    from types import SimpleNamespace

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import jpeglm.cli.sample as cli
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams
    from jpeglm.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                                         pad_token_id=3)).eval()
    loaded = SimpleNamespace(model=model, tokenizer=tok, codec=JpegCodec(JpegParams(size=32)), meta={})
    cli._load = lambda path, device: loaded
    args = argparse.Namespace(model="ckpt", prompt=prompts, prompt_ratio=0.5, prompt_frames=None, num=2,
                              temperature=1.0, top_k=50, top_p=1.0, seed=0, batch_size=1, max_new_tokens=80,
                              constrain=True, steer=True, device="cpu", backend="torch", overwrite=False, out=out)
    return cli.run(args)


def die() -> int:
    """Two processes by hand: rank 1 joins and exits; rank 0's barrier must end in a ParallelError."""
    from jpeglm.eval.parallel import ParallelError, Ranks

    ranks = Ranks.from_env(timeout_s=float(os.environ.get("DIE_TIMEOUT", "20")))
    if ranks.rank == 1:
        os._exit(3)
    try:
        ranks.barrier("waiting for every process to finish sampling")
    except ParallelError as e:
        print(f"ParallelError: {e}")
        return 4
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "die", "sample"])
    ap.add_argument("config", nargs="?", help="run: the eval config; sample: the output folder")
    ap.add_argument("--prompt", nargs="*", default=[])
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    if a.mode == "sample":
        sys.exit(sample(a.config, a.prompt))
    sys.exit(run(a.config, a.sleep, a.log) if a.mode == "run" else die())
