"""The Swin HyperIQA fork's network (SMART-IQA, cny123222/Perceptual-IQA-CS3324,
``smart_iqa/models/smart_iqa.py``) restated in torch.nn, for parity tests.

Written from the fork's code: the same modules under the same attribute names,
so ``state_dict()`` has exactly the fork's keys (``swin.backbone.*`` from timm's
``features_only`` Swin, ``swin.lda*``, ``multiscale_attention.attention_net.*``,
``conv1.*``, ``fc*``), and the same eval forward (its grouped-conv target net
included). No Keras. timm builds the Swin (``pretrained=False``); ``swin_overrides``
shrink it for fast tests (the fork itself uses timm's tiny/small/base).
"""

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

TIMM_NAMES = {"tiny": "swin_tiny_patch4_window7_224", "small": "swin_small_patch4_window7_224",
              "base": "swin_base_patch4_window7_224"}
# keras_hyperiqa's swin_micro, as timm overrides of swin_tiny.
MICRO = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class MultiScaleAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.attention_net = nn.Sequential(
            nn.Linear(channels[-1], 256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, len(channels)), nn.Softmax(dim=1))

    def forward(self, feats):
        b = feats[0].size(0)
        pooled = [F.adaptive_avg_pool2d(f, (7, 7)) for f in feats]
        g = F.adaptive_avg_pool2d(feats[-1], (1, 1)).squeeze(-1).squeeze(-1)
        w = self.attention_net(g)
        return torch.cat([p * w[:, i].view(b, 1, 1, 1) for i, p in enumerate(pooled)], 1), w


class SwinBackbone(nn.Module):
    def __init__(self, lda_out, in_chn, size, drop_path_rate, overrides):
        super().__init__()
        self.backbone = timm.create_model(TIMM_NAMES[size], pretrained=False, features_only=True,
                                          drop_path_rate=drop_path_rate, out_indices=(0, 1, 2, 3),
                                          **overrides)
        c = self.channels = self.backbone.feature_info.channels()
        self.lda1_pool = nn.Sequential(nn.Conv2d(c[0], 16, 1, bias=False), nn.AvgPool2d(7, 7))
        self.lda1_fc = nn.Linear(16 * 64, lda_out)
        self.lda2_pool = nn.Sequential(nn.Conv2d(c[1], 32, 1, bias=False), nn.AvgPool2d(7, 7))
        self.lda2_fc = nn.Linear(32 * 16, lda_out)
        self.lda3_pool = nn.Sequential(nn.Conv2d(c[2], 64, 1, bias=False), nn.AvgPool2d(7, 7))
        self.lda3_fc = nn.Linear(64 * 4, lda_out)
        self.lda4_pool = nn.AvgPool2d(7, 7)
        self.lda4_fc = nn.Linear(c[3], in_chn - 3 * lda_out)

    def forward(self, x):
        feats = [f.permute(0, 3, 1, 2).contiguous() for f in self.backbone(x)]  # timm 1.0: NHWC
        n = x.size(0)
        vec = torch.cat([
            self.lda1_fc(self.lda1_pool(feats[0]).view(n, -1)),
            self.lda2_fc(self.lda2_pool(feats[1]).view(n, -1)),
            self.lda3_fc(self.lda3_pool(feats[2]).view(n, -1)),
            self.lda4_fc(self.lda4_pool(feats[3]).view(n, -1))], 1)
        return feats, vec


class HyperNet(nn.Module):
    """The fork's ``HyperNet(16, 112, 224, 112, 56, 28, 14, 7, ...)`` plus its ``TargetNet``."""

    def __init__(self, size="tiny", use_multiscale=True, use_attention=True, drop_path_rate=0.2,
                 dropout_rate=0.3, swin_overrides=None):
        super().__init__()
        self.dims = (224, 112, 56, 28, 14)
        self.use_multiscale, self.use_attention = use_multiscale, use_attention
        self.swin = SwinBackbone(16, 224, size, drop_path_rate, swin_overrides or {})
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        c = self.swin.channels
        if use_multiscale and use_attention:
            self.multiscale_attention = MultiScaleAttention(c)
        self.conv1 = nn.Sequential(
            nn.Conv2d(sum(c) if use_multiscale else c[-1], 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, 256, 1), nn.ReLU(inplace=True), nn.Conv2d(256, 112, 1), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout_rate)
        t, f1, f2, f3, f4 = self.dims
        self.fc1w_conv = nn.Conv2d(112, t * f1 // 49, 3, padding=1)
        self.fc1b_fc = nn.Linear(112, f1)
        self.fc2w_conv = nn.Conv2d(112, f1 * f2 // 49, 3, padding=1)
        self.fc2b_fc = nn.Linear(112, f2)
        self.fc3w_conv = nn.Conv2d(112, f2 * f3 // 49, 3, padding=1)
        self.fc3b_fc = nn.Linear(112, f3)
        self.fc4w_conv = nn.Conv2d(112, f3 * f4 // 49, 3, padding=1)
        self.fc4b_fc = nn.Linear(112, f4)
        self.fc5w_fc = nn.Linear(112, f4)
        self.fc5b_fc = nn.Linear(112, 1)
        self.target_dropout = nn.Dropout(dropout_rate)  # TargetNet's, a parameter-free module

    def forward(self, images_0_255_nhwc, return_attention=False):
        x = torch.as_tensor(images_0_255_nhwc, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        x = (x - MEAN) / STD
        feats, vec = self.swin(x)
        weights = None
        if self.use_multiscale and self.use_attention:
            h, weights = self.multiscale_attention(feats)
        elif self.use_multiscale:
            h = torch.cat([F.adaptive_avg_pool2d(f, (7, 7)) for f in feats[:3]] + [feats[3]], 1)
        else:
            h = feats[3]
        h = self.dropout(self.conv1(h))
        n = x.size(0)
        pooled = self.pool(h).view(n, -1)
        t, f1, f2, f3, f4 = self.dims
        params = [
            (self.fc1w_conv(h).view(n, f1, t, 1, 1), self.fc1b_fc(pooled)),
            (self.fc2w_conv(h).view(n, f2, f1, 1, 1), self.fc2b_fc(pooled)),
            (self.fc3w_conv(h).view(n, f3, f2, 1, 1), self.fc3b_fc(pooled)),
            (self.fc4w_conv(h).view(n, f4, f3, 1, 1), self.fc4b_fc(pooled)),
            (self.fc5w_fc(pooled).view(n, 1, f4, 1, 1), self.fc5b_fc(pooled)),
        ]
        q = vec.view(n, t, 1, 1)
        for k, (w, b) in enumerate(params):  # TargetFC: one grouped conv, a group per image
            q = F.conv2d(q.reshape(1, -1, 1, 1), w.reshape(-1, w.shape[2], 1, 1), b.reshape(-1),
                         groups=n).view(n, w.shape[1], 1, 1)
            if k < 4:
                q = torch.sigmoid(q)
            if k < 3:
                q = self.target_dropout(q)
        q = q.view(n)
        return (q, weights) if return_attention else q

    def fork_state_dict(self):
        """The fork's keys (the target net's dropout owns nothing)."""
        return {k: v.clone() for k, v in self.state_dict().items()}


def randomise(net, seed=0):
    """Random weights that keep the fork's activations in a working range.

    LayerNorm weights ~ 1 + N(0, 0.2) and biases ~ N(0, 0.1) (calibrated
    statistics are the LayerNorms' own: they normalise per token); Swin
    linears ~ N(0, 0.02) as timm initialises them, relative position bias
    tables ~ N(0, 1); the taps and head ~ He normal; the generators scaled
    down so the target net's sigmoids are not saturated; the attention's
    ``fc`` large enough that the stage weights differ from 1/4 and between images.
    """
    g = torch.Generator().manual_seed(seed)
    norms = {n for n, m in net.named_modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point() or name.endswith(("attn_mask", "relative_position_index")):
                continue
            owner, _, leaf = name.rpartition(".")
            r = torch.randn(t.shape, generator=g)
            if leaf == "relative_position_bias_table":
                t.copy_(r)
            elif owner in norms:
                t.copy_(1.0 + 0.2 * r if leaf == "weight" else 0.1 * r)
            elif name.startswith("swin.backbone."):
                t.copy_(0.05 * r if leaf == "bias" else 0.02 * r)
            elif leaf == "bias":
                t.copy_(0.05 * r)
            else:
                fan_in = int(np.prod(t.shape[1:]))
                scale = np.sqrt(2.0 / fan_in)
                if name.startswith("fc"):
                    scale *= 0.1
                elif name.startswith("multiscale_attention"):
                    scale *= 1.5
                t.copy_(scale * r)
    return net


def test_patches(n=4, seed=0):
    """[0, 255] NHWC patches that differ in brightness, contrast and texture."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        base = rng.uniform(40, 215, (1, 1, 3))
        scale = 8 + 50 * i / max(n - 1, 1)
        smooth = rng.normal(0, 1, (28, 28, 3)).repeat(8, 0).repeat(8, 1)
        out.append(np.clip(base + scale * smooth + rng.normal(0, 4 + 6 * i, (224, 224, 3)), 0, 255))
    return np.stack(out).astype("float32")
