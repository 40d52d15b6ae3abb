"""bf16 autocast on CPU: loss with the residual stream in float32 vs in bf16 (same seed, same batches).

Usage: PYTHONPATH=src python benchmarks/bf16_residual_check.py bf16-residual|fp32-residual STEPS [PREPARED_DIR]
"""
import sys, time, numpy as np, torch
from crammer.data.packed import PackedCorpus
from crammer.model import modeling_crammed_bert as m
from crammer.train.config import make_pretrain_config
from crammer.train.setup import build_training, model_config_for
from crammer.train.bench import SPECIAL_TOKEN_IDS

torch.set_num_threads(2)
variant = sys.argv[1]
if variant == "fp32-residual":
    # the model reads torch.get_autocast_dtype through its module: make it answer float32 (no cast)
    m.torch = type("T", (), {"__getattr__": lambda s, k: getattr(torch, k), "get_autocast_dtype": staticmethod(lambda d: torch.float32)})()
cfg = make_pretrain_config("tiny", ["model.num_hidden_layers=4", "model.hidden_size=256", "model.num_attention_heads=4", "model.intermediate_size=1024", "optim.lr=1e-3", "precision=bf16"])
corpus = PackedCorpus(sys.argv[3] if len(sys.argv) > 3 else ".gpu/wiki00")
training = build_training(cfg, model_config_for(cfg, corpus.vocab_size, corpus.seq_len, "corpus seq_len"),
                          SPECIAL_TOKEN_IDS, torch.device("cpu"))
collator, step = training.collator, training.step()
gen = torch.Generator().manual_seed(0)
rng = np.random.default_rng(0)
losses = []
t = time.time()
for i in range(int(sys.argv[2])):
    idx = np.sort(rng.choice(len(corpus), 32, replace=False))
    tokens = torch.from_numpy(np.stack([np.asarray(corpus[j], dtype=np.int64) for j in idx]))
    batch = collator(tokens, gen)
    lr = 1e-3 * min(1.0, (i + 1) / 50)
    out = step([batch], lr)
    losses.append(float(out.loss))
print(variant, "steps", len(losses), "first", round(losses[0], 3), "mean last 20", round(sum(losses[-20:]) / 20, 4), f"{time.time()-t:.0f}s")
print(" ".join(f"{l:.2f}" for l in losses[::20]))
