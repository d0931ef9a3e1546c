"""Does PTG-RM's prior path matter? The measurements behind docs/refine.md's "every prior ties" discussion.

``checkpoints``: for refiners trained by benchmarks/ptgrm_ablation.py, how far each block moved from its init and how
much the refined output changes when the prior vector g is zeroed (first images of one test set).
``toy``: a PTG-RM trained on a target set by g alone (input +/- 0.05, the sign given only by which of two prior
vectors comes with the image): whether, and at which budget, the prior path learns to use g.

    python benchmarks/ptgrm_prior_probe.py checkpoints --work runs/ptgrm_ablation --task derain \\
        --prior mobilenet_v2_imagenet --dataset Rain100L --root ../shared/benchmarks
    python benchmarks/ptgrm_prior_probe.py checkpoints --run runs/ptgrm_study/refine/derain/imagenet-s1 --images 1
    python benchmarks/ptgrm_prior_probe.py toy --steps 150 --lr 1e-4
    python benchmarks/ptgrm_prior_probe.py toy --steps 400 --lr 1e-3 [--default-init]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ipt.data.testsets import load_benchmark
from ipt.refine.checkpoint import load_refined
from ipt.refine.ptgrm import PTGRM, PTGRMSpec
from ipt.train.data import seed_of


def probe_checkpoints(a: argparse.Namespace) -> None:
    run = a.run or a.work / "refine" / f"{a.task}-{a.prior}"
    cfg = json.loads((run / "config.json").read_text())
    model = load_refined(run / "model.pt")
    torch.manual_seed(seed_of(cfg["seed"], "ptgrm-init") % 2**63)  # the init the run started from
    start = PTGRM(model.refiner.spec, zero_init=cfg["zero_init"]).state_dict()
    moved: dict[str, float] = {}
    for k, v in model.refiner.state_dict().items():
        block = ".".join(k.split(".")[:2])
        moved[block] = max(moved.get(block, 0.0), (v - start[k]).abs().max().item())
    print("max |param - init| per block:", {k: f"{v:.1e}" for k, v in moved.items()})
    print(f"largest |weight| of the last (zero-init) conv: {model.refiner.output_conv.weight.abs().max().item():.1e}")
    with torch.inference_mode():
        for pair in load_benchmark(a.root, a.dataset, a.task, limit=a.images).pairs:
            lq = torch.as_tensor(np.ascontiguousarray(pair.lq)) if isinstance(pair.lq, np.ndarray) else pair.lq
            lq = lq.permute(2, 0, 1)[None].float() if lq.dim() == 3 else lq.float()
            base = model.base_output(lq)
            g = model.prior(lq / 255)
            with_g, without = model.refine(base, lq, g), model.refine(base, lq, torch.zeros_like(g))
            residual, effect = (with_g - base.clamp(0, 255)).abs(), (with_g - without).abs()
            print(
                f"{pair.name}: residual mean {residual.mean():.4f} (0-255); |out(g) - out(0)| mean "
                f"{effect.mean():.1e} max {effect.max():.1e}"
            )


def probe_toy(a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    dim, n = 32, 8
    model = PTGRM(PTGRMSpec(prior_dim=dim, blocks=1), zero_init=not a.default_init)
    prior_path = {k: p for k, p in model.named_parameters() if ".project." in k}
    start = {k: p.detach().clone() for k, p in prior_path.items()}
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(1)
    protos = torch.nn.functional.normalize(torch.randn(2, dim, generator=gen), dim=1)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.rand(size, 3, 16, 16, generator=gen) * 0.8 + 0.1
        c = torch.randint(0, 2, (size,), generator=gen)
        return x, protos[c], protos[1 - c], x + (c.float() * 2 - 1)[:, None, None, None] * 0.05

    for step in range(a.steps):
        x, g, _, hr = batch(n)
        loss = (model(x, x, g) - hr).abs().mean()
        loss.backward()
        if step in (0, 1, a.steps - 1):
            grad = max(p.grad.abs().max().item() for p in prior_path.values())
            print(f"step {step}: L1 {loss.item():.4f}, max |grad| on the prior path {grad:.1e}")
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"prior path moved by at most {max((p - start[k]).abs().max().item() for k, p in prior_path.items()):.1e}")
    with torch.no_grad():
        x, g, other, hr = batch(16)
        l1 = {name: (model(x, x, v) - hr).abs().mean().item() for name, v in (("g", g), ("0", 0 * g), ("other", other))}
    print(f"L1 with the right g {l1['g']:.4f}, with g = 0 {l1['0']:.4f}, with the other class's g {l1['other']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="probe", required=True)
    c = sub.add_parser("checkpoints")
    c.add_argument("--work", type=Path, default=Path("runs/ptgrm_ablation"))
    c.add_argument("--task", default="derain")
    c.add_argument("--prior", default="mobilenet_v2_imagenet")
    c.add_argument("--run", type=Path, default=None, help="a refiner's folder (instead of --work/refine/TASK-PRIOR)")
    c.add_argument("--dataset", default="Rain100L")
    c.add_argument("--root", default="../shared/benchmarks")
    c.add_argument("--images", type=int, default=3)
    t = sub.add_parser("toy")
    t.add_argument("--steps", type=int, default=150)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--default-init", action="store_true", help="the reference's init, not zero_init")
    a = ap.parse_args()
    torch.set_num_threads(1)
    (probe_checkpoints if a.probe == "checkpoints" else probe_toy)(a)


if __name__ == "__main__":
    main()
