"""An independent statement of the reference HyperIQA forward, in torch.nn.functional.

Written from the original network (SSL92/hyperIQA ``models.py``: ResNet-50 with
LDA taps, the hyper head and the target network), straight on an original-format state dict: no Keras, no keras-hub, no timm. The
tests compare the Keras model against it.
"""

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
RESNET50_BLOCKS = (3, 4, 6, 3)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"],
                        sd[p + ".weight"], sd[p + ".bias"], training=False, eps=1e-5)


def _bottleneck(x, sd, p, stride):
    out = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
    out = F.relu(_bn(F.conv2d(out, sd[p + ".conv2.weight"], stride=stride, padding=1), sd, p + ".bn2"))
    out = _bn(F.conv2d(out, sd[p + ".conv3.weight"]), sd, p + ".bn3")
    if p + ".downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd, p + ".downsample.1")
    return F.relu(out + x)


def resnet50_stages(x, sd, prefix="res."):
    """layer1..layer4 outputs of torchvision's ResNet-50 (channels-first)."""
    x = F.relu(_bn(F.conv2d(x, sd[prefix + "conv1.weight"], stride=2, padding=3), sd, prefix + "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    stages = []
    for layer, blocks in enumerate(RESNET50_BLOCKS, 1):
        for i in range(blocks):
            stride = 2 if (i == 0 and layer > 1) else 1
            x = _bottleneck(x, sd, f"{prefix}layer{layer}.{i}", stride)
        stages.append(x)
    return stages


def hyperiqa_forward(images_0_255_nhwc, sd):
    """Scores (N,) for [0, 255] NHWC numpy patches, from an original state dict."""
    sd = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in sd.items()}
    x = torch.as_tensor(images_0_255_nhwc, dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    x = (x - MEAN.double()) / STD.double()
    l1, l2, l3, l4 = resnet50_stages(x, sd)
    n = x.shape[0]

    def lda(feat, i, reduce):
        if reduce:
            feat = F.conv2d(feat, sd[f"res.lda{i}_pool.0.weight"])
        feat = F.avg_pool2d(feat, 7, 7).reshape(n, -1)  # channels-first flatten
        return F.linear(feat, sd[f"res.lda{i}_fc.weight"], sd[f"res.lda{i}_fc.bias"])

    target_in = torch.cat([lda(l1, 1, True), lda(l2, 2, True), lda(l3, 3, True), lda(l4, 4, False)], 1)
    h = F.relu(F.conv2d(l4, sd["conv1.0.weight"], sd["conv1.0.bias"]))
    h = F.relu(F.conv2d(h, sd["conv1.2.weight"], sd["conv1.2.bias"]))
    h = F.relu(F.conv2d(h, sd["conv1.4.weight"], sd["conv1.4.bias"]))
    pooled = F.adaptive_avg_pool2d(h, 1).reshape(n, -1)

    dims = (224, 112, 56, 28, 14, 1)
    # The original's grouped-conv target net: input (1, N*in, 1, 1), weights (N*out, in, 1, 1), groups N.
    q = target_in.reshape(1, -1, 1, 1)
    for k in range(1, 6):
        if k < 5:
            w = F.conv2d(h, sd[f"fc{k}w_conv.weight"], sd[f"fc{k}w_conv.bias"], padding=1)
        else:
            w = F.linear(pooled, sd["fc5w_fc.weight"], sd["fc5w_fc.bias"])
        w = w.reshape(n * dims[k], dims[k - 1], 1, 1)
        b = F.linear(pooled, sd[f"fc{k}b_fc.weight"], sd[f"fc{k}b_fc.bias"]).reshape(-1)
        q = F.conv2d(q, w, b, groups=n)
        if k < 5:
            q = torch.sigmoid(q)
    return q.reshape(n).numpy()


def random_original_state_dict(seed=0):
    """Every key of the original checkpoint (355 with num_batches_tracked), random values.

    Scales keep activations in a sensible range so that scores vary between images.
    """
    import torchvision

    g = np.random.RandomState(seed)
    sd = {}
    for k, v in torchvision.models.resnet50(weights=None).state_dict().items():
        if k.startswith("fc."):
            continue
        sd["res." + k] = v
    shapes = {
        "res.lda1_pool.0.weight": (16, 256, 1, 1), "res.lda1_fc.weight": (16, 1024), "res.lda1_fc.bias": (16,),
        "res.lda2_pool.0.weight": (32, 512, 1, 1), "res.lda2_fc.weight": (16, 512), "res.lda2_fc.bias": (16,),
        "res.lda3_pool.0.weight": (64, 1024, 1, 1), "res.lda3_fc.weight": (16, 256), "res.lda3_fc.bias": (16,),
        "res.lda4_fc.weight": (176, 2048), "res.lda4_fc.bias": (176,),
        "conv1.0.weight": (1024, 2048, 1, 1), "conv1.0.bias": (1024,),
        "conv1.2.weight": (512, 1024, 1, 1), "conv1.2.bias": (512,),
        "conv1.4.weight": (112, 512, 1, 1), "conv1.4.bias": (112,),
        "fc1w_conv.weight": (512, 112, 3, 3), "fc1w_conv.bias": (512,),
        "fc2w_conv.weight": (128, 112, 3, 3), "fc2w_conv.bias": (128,),
        "fc3w_conv.weight": (32, 112, 3, 3), "fc3w_conv.bias": (32,),
        "fc4w_conv.weight": (8, 112, 3, 3), "fc4w_conv.bias": (8,),
        "fc1b_fc.weight": (112, 112), "fc1b_fc.bias": (112,),
        "fc2b_fc.weight": (56, 112), "fc2b_fc.bias": (56,),
        "fc3b_fc.weight": (28, 112), "fc3b_fc.bias": (28,),
        "fc4b_fc.weight": (14, 112), "fc4b_fc.bias": (14,),
        "fc5w_fc.weight": (14, 112), "fc5w_fc.bias": (14,),
        "fc5b_fc.weight": (1, 112), "fc5b_fc.bias": (1,),
    }
    for k, shape in shapes.items():
        sd[k] = torch.zeros(shape)
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(g.randint(0, 1000)))
            continue
        shape = tuple(v.shape)
        if k.endswith("running_var"):
            val = g.uniform(0.5, 1.5, shape)
        elif k.endswith("running_mean"):
            val = g.normal(0, 0.1, shape)
        elif len(shape) == 1 and (".bn" in k or "downsample.1" in k or k.startswith("res.bn1")):
            val = g.uniform(0.8, 1.2, shape) if k.endswith("weight") else g.normal(0, 0.05, shape)
        elif len(shape) == 1:
            val = g.normal(0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            val = g.normal(0, np.sqrt(2.0 / fan_in), shape)
            if k.endswith("bn3.weight"):
                val = val * 0.2
        out[k] = torch.as_tensor(val, dtype=torch.float32)
    _calibrate_batch_norm(out, g)
    # Generated target-net weights and biases small enough that its sigmoids
    # are not saturated, so the scores depend on the LDA vector: permuting
    # lda1's flatten order moves them by ~9% of their spread (zeroing lda4 by
    # ~30%), far above the parity tolerance.
    for k in list(out):
        if k.startswith(("fc1w", "fc2w", "fc3w", "fc4w", "fc5w", "fc1b", "fc2b", "fc3b", "fc4b", "fc5b")):
            out[k] = out[k] * 0.1
    return out


def _calibrate_batch_norm(sd, g):
    """Running statistics that match the random weights' real activations.

    Random running stats leave the ResNet's activations growing by orders of
    magnitude, which saturates every sigmoid downstream and makes the scores
    blind to most of the network. One pass of random images in training mode
    (cumulative averages) sets stats a trained network would have.
    """
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    state = {k[len("res."):]: v for k, v in sd.items() if k.startswith("res.") and "lda" not in k}
    net.load_state_dict(state, strict=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    images = torch.as_tensor(g.normal(0, 1, (8, 3, 224, 224)), dtype=torch.float32)
    with torch.no_grad():
        net(images)
    for k, v in net.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            sd["res." + k] = v.clone()
