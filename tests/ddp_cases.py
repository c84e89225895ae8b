"""Run by tests/test_ddp.py: train one config through `train` and save what this process saw and ended with.

    torchrun --nproc_per_node 2 tests/ddp_cases.py CONFIG.json OUT BATCH      (two processes, batch BATCH each)
    python tests/ddp_cases.py CONFIG.json OUT BATCH                           (one process; or `main` in-process)

Saved in OUT/world{W}-rank{R}.pt: the first step's gradients of the network (all-reduced under DDP), the training
order of each epoch, the final network and, for REPA-E, the tuned autoencoder and discriminator."""
import json, sys
from pathlib import Path
import torch
from fastai.callback.core import Callback
from medsynth.training import learner as L
from medsynth.training.config import make_config
from medsynth.training.data import process_group, _dist

class Probe(Callback):
    "Record the first step's gradients, each epoch's sampled order and, after the fit, the networks."
    order = 0                                           # after SamplerEpochCB (-20) has set the epoch
    def __init__(self, out:Path):
        self.out, self.orders, self.grads = Path(out), [], None
    def before_epoch(self):
        self.orders.append(list(self.dls.train.sampler))
    def after_backward(self):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in self.learn.net.named_parameters() if p.grad is not None}
    def after_fit(self):
        world, rank = _dist()
        got = dict(grads=self.grads, orders=self.orders, model=self.learn.net.state_dict(), epochs=self.epoch + 1)
        for cb in self.learn.cbs:
            if getattr(cb, 'state_key', None) == 'repa_e':
                got['repa_e'] = cb.state_dict()
        torch.save(got, self.out/f'world{world}-rank{rank}.pt')

def main(cfg_file:Path, out:Path, batch:int):
    "Train the config in `cfg_file` with batch `batch` per process into `out/run-world{W}`, with a `Probe`."
    fit = L._fit
    def probed_fit(learn, cfg, start):
        learn.add_cb(Probe(out))
        return fit(learn, cfg, start)
    L._fit = probed_fit
    try:
        with process_group():
            torch.set_num_threads(1)
            cfg = make_config(dict(json.loads(Path(cfg_file).read_text()), batch_size=batch))
            L.train(cfg, Path(out)/f'run-world{_dist()[0]}', overwrite=True, progress=False)
    finally:
        L._fit = fit

if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
