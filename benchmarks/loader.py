"""Loader throughput for 2D slices from NIfTI volumes, against what training consumes, measured in the same run.

Phantom subjects are written as NIfTI (the real reader path), then `SliceDataset` serves axial slices at 64x64
through a `DataLoader` at batch 16: without a cache (each slice re-reads and re-normalises its volume), from the
in-memory cache, and from the on-disk cache reopened by a second dataset. Training consumption is one optimiser
step of a ~1.1M-parameter MONAI `DiffusionModelUNet` at batch 16, 64x64, on this machine. Goal: the cached
loader serves at least 10x the images per second that training consumes. Writes loader.md and loader.json.

    python benchmarks/loader.py [--out runs/benchmarks] [--subjects 12] [--size 128 128 80] [--steps 5]
"""
from __future__ import annotations
import argparse, json, tempfile, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from medsynth.data.phantoms import BrainPhantom, write_subjects
from medsynth.data.datasets import SliceDataset

BATCH, SIZE = 16, (64, 64)

def loader_rate(ds, batches:int) -> float:
    "Slices per second served by a shuffled DataLoader over `batches` batches (after one warm-up batch), epoch after epoch."
    dl = DataLoader(ds, BATCH, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0))
    it = iter(dl); next(it); n, t0 = 0, time.perf_counter()
    while n < batches * BATCH:
        b = next(it, None)
        if b is None: it = iter(dl); continue
        n += len(b['t1'])
    return n / (time.perf_counter() - t0)

def training_rate(steps:int) -> tuple[float, int]:
    "Images per second one optimiser step of a small MONAI diffusion UNet consumes (batch 16, 64x64, 2 conditioning channels)."
    from monai.networks.nets import DiffusionModelUNet
    torch.manual_seed(0)
    net = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(32, 64, 64), attention_levels=(False, False, True),
                             num_res_blocks=1, num_head_channels=32)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randn(BATCH, 2, *SIZE); t = torch.randint(0, 1000, (BATCH,))
    def step():
        loss = (net(x, t) - x[:, :1]).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    step(); t0 = time.perf_counter()
    for _ in range(steps): step()
    return BATCH * steps / (time.perf_counter() - t0), sum(p.numel() for p in net.parameters())

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/benchmarks'); p.add_argument('--subjects', type=int, default=12)
    p.add_argument('--size', type=int, nargs=3, default=[128, 128, 80]); p.add_argument('--steps', type=int, default=5)
    p.add_argument('--batches', type=int, default=100, help='batches timed per cached loader')
    a = p.parse_args(argv)
    if a.subjects < 1 or a.steps < 1 or a.batches < 1: p.error('--subjects, --steps and --batches must be >= 1')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_subjects(tmp/'data', BrainPhantom(tuple(a.size), seed=0), a.subjects, modalities=('t1', 't1ce', 'seg'))
        kw = dict(modalities=('t1', 't1ce', 'seg'), size=SIZE)
        t0 = time.perf_counter(); mem = SliceDataset(tmp/'data', **kw); build = time.perf_counter() - t0
        nocache = SliceDataset(tmp/'data', cache=None, **kw)
        SliceDataset(tmp/'data', cache='disk', cache_dir=tmp/'cache', **kw)
        t0 = time.perf_counter(); disk = SliceDataset(tmp/'data', cache='disk', cache_dir=tmp/'cache', **kw); reopen = time.perf_counter() - t0
        rates = dict(no_cache=loader_rate(nocache, max(2, a.batches // 10)), memory=loader_rate(mem, a.batches), disk=loader_rate(disk, a.batches))
    train, n_params = training_rate(a.steps)
    res = dict(subjects=a.subjects, volume=a.size, slices=len(mem), batch=BATCH, slice_size=SIZE, build_s=build, disk_reopen_s=reopen,
               loader_slices_per_s=rates, train_images_per_s=train, unet_params=n_params,
               ratio={k: v / train for k, v in rates.items()}, goal=10.)
    res['goal_met'] = min(res['ratio']['memory'], res['ratio']['disk']) >= res['goal']
    rows = [f"| {k} | {v:,.0f} | {v / train:,.1f}x |" for k, v in rates.items()]
    md = '\n'.join([f"# Loader throughput: {len(mem)} axial slices from {a.subjects} NIfTI volumes {'x'.join(map(str, a.size))}, served at 64x64, batch 16", '',
                    '| loader | slices/s | vs training |', '|---|---:|---:|', *rows, '',
                    f"Training consumes {train:,.1f} images/s (MONAI DiffusionModelUNet, {n_params / 1e6:.2f}M parameters, batch 16, 64x64, AdamW step, this machine).",
                    f"Building the memory cache took {build:.1f} s (every volume read and normalised once); reopening the disk cache {reopen:.2f} s.",
                    f"Goal: cached loaders >= 10x training consumption: {'met' if res['goal_met'] else 'NOT met'}."])
    (out/'loader.md').write_text(md + '\n'); (out/'loader.json').write_text(json.dumps(res, indent=1))
    print(md); print(f"table: {out/'loader.md'}\ndata: {out/'loader.json'}")

if __name__ == '__main__': main()
