"""The plain-PyTorch HyperIQA a user would write instead of this package.

The benchmark's baseline (``benchmarks.bench``): a timm ResNet
(``features_only``, no pretrained weights) with the HyperIQA LDA taps, hyper
head and target network written as ``torch.nn`` modules, and
``torch.optim.Adam`` over the original solver's two parameter groups
(backbone + LDA at ``lr``, head + generators at ``lr * lr_ratio``,
``weight_decay=5e-4``). The maths follow ``tests/reference_hyperiqa.py``
(the reference network) with parameters instead of a state dict; the target
net is a batched matmul, like the Keras model's (the original uses an
equivalent grouped convolution). Channels-first throughout, input (N, 3, P, P)
in [0, 255]. Needs timm (the ``timm`` extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TARGET_DIMS = (224, 112, 56, 28, 14, 1)


def timm_backbone(name: str) -> nn.Module:
    """A timm ResNet returning its four stage outputs (strides 4, 8, 16, 32).

    ``resnet_tiny`` mirrors the package's small ResNet (one basic block per
    stage, 64 channels throughout); other names go to ``timm.create_model``.
    """
    import timm

    if name == "resnet_tiny":
        from timm.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [1, 1, 1, 1], channels=(64, 64, 64, 64), num_classes=0)
        return _Stages(net)
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))


class _Stages(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.act1(n.bn1(n.conv1(x))))
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out


class TorchHyperIQA(nn.Module):
    """HyperIQA in ``torch.nn``: backbone stages -> LDA taps + hyper head -> target net."""

    def __init__(self, backbone: str = "resnet50", patch_size: int = 224, lda_out: int = 16,
                 hyper_in: int = 112, target_dims=TARGET_DIMS, head_widths=(1024, 512)):
        super().__init__()
        self.res = timm_backbone(backbone)
        with torch.no_grad():
            was = self.res.training
            self.res.eval()
            shapes = [tuple(f.shape[1:]) for f in self.res(torch.zeros(1, 3, patch_size, patch_size))]
            self.res.train(was)
        self.target_dims = tuple(target_dims)
        self.size = shapes[-1][1]
        s = self.size
        units = [lda_out] * 3 + [target_dims[0] - 3 * lda_out]
        reduce = [lda_out, 2 * lda_out, 4 * lda_out, None]
        self.lda_pool = nn.ModuleList()
        self.lda_fc = nn.ModuleList()
        for (c, h, _), u, r in zip(shapes, units, reduce):
            self.lda_pool.append(nn.Conv2d(c, r, 1, bias=False) if r else nn.Identity())
            pooled = (h // s) ** 2
            self.lda_fc.append(nn.Linear((r or c) * pooled, u))
        c4 = shapes[-1][0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(c4, head_widths[0], 1), nn.ReLU(inplace=True),
            nn.Conv2d(head_widths[0], head_widths[1], 1), nn.ReLU(inplace=True),
            nn.Conv2d(head_widths[1], hyper_in, 1), nn.ReLU(inplace=True),
        )
        self.wgen = nn.ModuleList()
        self.bgen = nn.ModuleList()
        for k in range(1, len(target_dims)):
            out, inp = target_dims[k], target_dims[k - 1]
            if k < len(target_dims) - 1:
                self.wgen.append(nn.Conv2d(hyper_in, out * inp // (s * s), 3, padding=1))
            else:
                self.wgen.append(nn.Linear(hyper_in, out * inp))
            self.bgen.append(nn.Linear(hyper_in, out))
        self.register_buffer("mean", 255.0 * torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255.0 * torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def backbone_parameters(self):
        return list(self.res.parameters()) + list(self.lda_pool.parameters()) + list(self.lda_fc.parameters())

    def hypernet_parameters(self):
        return (list(self.conv1.parameters()) + list(self.wgen.parameters())
                + list(self.bgen.parameters()))

    def forward(self, x):
        x = (x - self.mean) / self.std
        stages = self.res(x)
        n = x.shape[0]
        taps = [fc(F.avg_pool2d(pool(f), self.size, self.size).reshape(n, -1))
                for pool, fc, f in zip(self.lda_pool, self.lda_fc, stages)]
        q = torch.cat(taps, 1)
        h = self.conv1(stages[-1])
        pooled = h.mean(dim=(2, 3))
        dims = self.target_dims
        for k, (wg, bg) in enumerate(zip(self.wgen, self.bgen), 1):
            w = wg(h) if isinstance(wg, nn.Conv2d) else wg(pooled)
            w = w.reshape(n, dims[k], dims[k - 1])
            q = torch.baddbmm(bg(pooled).unsqueeze(-1), w, q.unsqueeze(-1)).squeeze(-1)
            if k < len(dims) - 1:
                q = torch.sigmoid(q)
        return q.reshape(n)


def make_optimizer(model: TorchHyperIQA, lr=2e-5, lr_ratio=10.0, weight_decay=5e-4):
    """``torch.optim.Adam`` with the original solver's two parameter groups."""
    return torch.optim.Adam(
        [{"params": model.backbone_parameters(), "lr": lr},
         {"params": model.hypernet_parameters(), "lr": lr * lr_ratio}],
        weight_decay=weight_decay,
    )
