"""Run by test_ddp.py under torchrun: a few BiasUnlearn steps in every process (gloo on CPU)."""

import sys

import torch

from biasunlearn.train import TrainConfig, train

torch.set_num_threads(1)
model_dir, data_dir, out = sys.argv[1:4]
rec = train(TrainConfig(model=model_dir, data_dir=data_dir, out=out, control_per_type=1, max_steps=3,
                        control_every=3, n_forget=2, n_retain=4, n_kl=2, save_steps=3, learning_rate=1e-3,
                        early_stop=False, keep_best=False))
print(f"RANK_DONE world_size={rec['world_size']} steps={rec['steps']}")
