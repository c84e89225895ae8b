"""Run by tests/test_train.py: train a tiny model and save this process's final weights.

    torchrun --nproc_per_node 2 tests/ddp_train.py DATA OUT BATCH [SEED]      (two processes, batch BATCH each)
    python tests/ddp_train.py DATA OUT BATCH [SEED]                           (one process)"""
import sys, torch
from pathlib import Path
from medsynth.training.config import make_config
from medsynth.training.data import build_datasets, build_dataloaders, process_group, _dist
from medsynth.training.learner import build_learner, _fit
from medsynth.training.checkpoint import CheckpointCB
from medsynth.training.callbacks import RunLog

data, out, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]); seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
with process_group():                                  # joined here, left cleanly at the end
    torch.set_num_threads(1)
    cfg = make_config(dict(data=data, mode='bravo', channels=[16, 32], attention_levels=[False, True], num_head_channels=16, batch_size=batch, epochs=2,
                           size=[16, 16], ema_after=0, lr=2e-3, timestep_sampler='loss_aware', seed=seed))
    tr, va, cl = build_datasets(cfg)
    learn = build_learner(cfg, out, build_dataloaders(tr, va, cfg), cl, progress=False)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (CheckpointCB, RunLog))])
    from fastai.callback.core import Callback
    class FirstGrads(Callback):
        "The gradients of the first optimiser step (all-reduced under DDP), before AdamW amplifies float-order differences."
        def after_backward(self):
            if not hasattr(self, 'g'): self.g = {n: p.grad.detach().clone() for n, p in learn.net.named_parameters() if p.grad is not None}
    fg = FirstGrads(); learn.add_cb(fg)
    _fit(learn, cfg, 0)
    world, rank = _dist()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dict(grads=fg.g, model=learn.net.state_dict(), ema=learn.ema.state_dict(), steps=int(learn.ema.step), tsampler=learn.dcb.tsampler.state_dict()), out/f'world{world}-rank{rank}-seed{seed}.pt')
