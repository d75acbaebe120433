"""Host reads per training step from raykd's own code (Tensor.item/__float__/__bool__/__int__/nonzero/tolist
calls made from raykd/), on whichever raykd tree PYTHONPATH names: run it once on an old checkout
and once on this one to compare. usage: python benchmarks/host_syncs.py DATA_DIR (a synthetic set of 64 px)"""
import json, sys, tempfile
from pathlib import Path
import torch
from raykd.config import experiment_from_dict
from raykd.train import loop
RAYKD = str(Path(loop.__file__).parents[1])
data = Path(sys.argv[1])
torch.set_num_threads(1)
for method in ("none", "mgd", "samkd"):
    with tempfile.TemporaryDirectory() as tmp:
        exp = {"name": "s", "data": {"train": {"annotations": str(data / "annotations/train.json"), "images": str(data / "images/train")},
               "val": {"annotations": str(data / "annotations/val.json"), "images": str(data / "images/val")}, "image_size": 64},
               "student": {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32},
               "distill": {"method": method, "pyramid_scales": [1, 2, 4], "mask_rule": "random"},
               "train": {"epochs": 2, "steps_per_epoch": 4, "batch_size": 2, "optimizer": "sgd", "lr": 0.001, "threads": 1,
                         "output_dir": tmp + "/run"}, "cache_dir": tmp + "/cache"}
        if method != "none":
            exp["teacher"] = {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32,
                              "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2}}
        run = loop._setup(experiment_from_dict(exp), None, log=lambda l: None)
        loop.train_one_epoch(run, 1, progress=False)
        calls = []
        orig = {n: getattr(torch.Tensor, n) for n in ("item", "__float__", "__bool__", "__int__", "nonzero", "tolist")}
        def wrap(n):
            def f(t, *a, **k):
                if sys._getframe(1).f_code.co_filename.startswith(RAYKD):
                    calls.append(n)
                return orig[n](t, *a, **k)
            return f
        for n in orig: setattr(torch.Tensor, n, wrap(n))
        try:
            loop.train_one_epoch(run, 2, progress=False)
        finally:
            for n, o in orig.items(): setattr(torch.Tensor, n, o)
        print(json.dumps({"tree": RAYKD, "method": method, "steps": run.steps_per_epoch, "host_reads": len(calls),
                          "per_step": len(calls) / run.steps_per_epoch}), flush=True)
