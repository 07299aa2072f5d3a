#!/usr/bin/env python3
"""The deep-hypercolumn model in PyTorch: the reference that hyperseg-engine is timed and checked against.

The model is the engine's, layer for layer, with the engine's parameter names (so that its safetensors
checkpoints load as they are):
- VGG16-BN from scratch: 3x3 convs, pad 1, no bias, BatchNorm2d(eps 1e-5, momentum 0.1), ReLU, 2x2 max-pool;
  fc6 and fc7 as 1x1 convs (fc6 7x7 pad 3 when the config says so), no bias, + BN + ReLU.
  Names: backbone.conv1_1.conv.weight, backbone.conv1_1.bn.{weight,bias,running_mean,running_var}, ...,
  backbone.fc6.conv.weight, backbone.fc7.bn.bias, ...
- Taps: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, fc7 (post-ReLU).
- Sparse bilinear gather with index arithmetic (not grid_sample): u = (x + 0.5) * w_tap / in_w - 0.5, clamped at 0,
  lower index floor(u) (at most w_tap - 1), upper index + 1 clamped to the last sample (align_corners=False).
- MLP: mlp.fc1 Linear(5568, 4096) - ReLU - mlp.fc2 Linear(4096, 2048) - ReLU - mlp.fc3 Linear(2048, 2), with bias.
- Loss: cross-entropy, mean over the sampled pixels. Optimiser: Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8.

Modes:
  --bench        time a training step (fp32, tf32, bf16 autocast) and dense inference of one 224x224 image (naive:
                 every tap upsampled to full size, concatenated, MLP on every pixel; and factored); median of --iters
                 after --warmup, the device synchronised around each iteration (wall clock, as the engine's bench);
                 JSON with the engine bench's keys (train_step_ms, dense_infer_ms, peak_mem_bytes, device, precision,
                 preset, train_step_tflops, dense_infer_tflops, iters, dense_factored_ms).
  --parity DIR   replay `hyperseg-engine bench --parity-dump DIR` with the same weights, inputs and steps, twice: in
                 fp32 (TF32 as the dump says) and in fp64 (the reference). Checks the engine's step-0 logits and loss,
                 every parameter's step-0 gradient, the batch-norm running statistics after step 0, dense-inference
                 probabilities of image 0 (both paths, and the factored one with bf16 activations) and the loss of every later step; PASS/FAIL per tensor, exit 1
                 on a failure.

How parity is judged. A fixed tolerance between two fp32 implementations does not work for the gradients of this
model: measured on the paper's model (CPU, both sides fp32), PyTorch's own fp32 gradients differ from fp64 by 0.5-1%
(l2) and up to 10% (max) in the backbone, while the logits agree to 3e-5. The likely cause is cancellation, not a bug (the
error appears at fc7, 7x7 maps with 245 values per channel: batch-norm backward subtracts the mean of a gradient that
is nearly the same everywhere at initialisation, leaving a small difference of large fp32 sums). So:
  error(x)  = ||x - fp64|| / ||fp64||  (l2 relative error against the fp64 replay; |x - fp64| / |fp64| for scalars)
  PASS when error(engine) <= max(floor, 4 x error(PyTorch fp32)).
The engine must be about as accurate as PyTorch fp32 (4x leaves room for a different but equally valid summation
order, e.g. the gather backward's atomics); the floor covers quantities that fp32 gets almost exactly (where 4x a
tiny error would be noise). Floors, fp32 with TF32 off on both sides:
  - logits, step-0 loss, running statistics: 1e-4 (one fp32 dot product of length K = 5568 has a relative rounding
    error of about sqrt(K) * 6e-8 = 5e-6; 16 conv/BN layers compound it to ~1e-5: a 10x margin);
  - gradients: 1e-3 (backward goes through the same layers again, with cancellation in batch-norm backward);
  - dense-inference probabilities (eval mode, step-0 weights, running statistics after one update): 1e-3;
  - losses of steps >= 1: 1e-3 (Adam's first update is about lr * sign(g): a gradient component at rounding-noise
    level can take the other sign and move its weight by 2 * lr, so trajectories drift apart by more than rounding).
The factored path with bf16 activations (the engine's settings::bf16_activations; dense_factored_bf16 in the dump)
is checked against PyTorch emulating the same roundings to bf16 in fp32 (HypercolumnNet.dense_factored_bf16), with
the floor 1e-2: on the tiny model both are 2.5e-3 off the fp64 probabilities, 4x that is the limit.
Step 0 in bf16 mixed precision (the engine's settings::bf16_conv and bf16_gemm; bf16.* in the dump) is checked against
PyTorch emulating the engine's roundings in fp32 (emulate_bf16_step), with the floor 1e-2 and a factor of 1.5, not 4:
there the error is the bf16 roundings' own, of the same size for both (their ratio was 0.8-1.3 per tensor on the tiny
model), not a difference of summation orders. At initialisation the backbone's bf16 gradients are 30-100% off the
fp64 ones (l2) for PyTorch's emulation as for the engine (batch-norm backward's cancellation, above, at bf16's 8 bits):
there a gradient of zeros (error 1) would pass the l2 check, so each bf16 gradient's direction is checked too: its
cosine with the fp64 gradient must be at least 0.8 times PyTorch's emulation's (a gradient of zeros has 0).
With a dump made with TF32 on (metadata tf32=true) the fp32 replay enables TF32 too and the floors are 1e-2 (forward),
5e-2 (gradients, later losses), 1e-1 (dense). The engine-vs-PyTorch-fp32 max relative error is printed for information.

Examples:
  python3 bench/pytorch_reference.py --bench --device cuda --preset paper --json torch.json
  python3 bench/pytorch_reference.py --bench --device cpu --preset tiny --precision fp32 --iters 3 --warmup 1
  python3 bench/pytorch_reference.py --bench --device cuda --preset paper --precision bf16 --compile --fused-adam
  hyperseg-engine bench --device cuda --preset paper --parity-dump /tmp/parity
  python3 bench/pytorch_reference.py --parity /tmp/parity --device cuda
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

PRESETS = {
    "paper": {
        "preset": "paper", "input_size": 224, "block_widths": [64, 128, 256, 512, 512], "fc_width": 4096,
        "fc6_kernel": 1, "mlp_hidden": [4096, 2048], "classes": 2, "mlp_dropout": 0.0, "batch_size": 5,
        "sample_points": 1600, "learning_rate": 1e-3,
    },
    "tiny": {
        "preset": "tiny", "input_size": 64, "block_widths": [8, 16, 32, 32, 32], "fc_width": 64,
        "fc6_kernel": 1, "mlp_hidden": [64, 32], "classes": 2, "mlp_dropout": 0.0, "batch_size": 5,
        "sample_points": 1600, "learning_rate": 1e-3,
    },
}
BLOCK_DEPTHS = [2, 2, 3, 3, 3]

# Floors of the --parity tolerances: (forward, gradients, losses after Adam steps), see the module doc.
FLOORS_FP32 = (1e-4, 1e-3, 1e-3)
FLOORS_TF32 = (1e-2, 5e-2, 5e-2)
FLOOR_DENSE_BF16 = 1e-2
FLOOR_BF16_STEP = 1e-2  # the bf16 training step (logits, loss, gradients); see the module doc
FACTOR_BF16_STEP = 1.5


# ---- FLOP count (the same formula as hyperseg_engine::bench::flops) ----------------------------------------------

def backbone_convs(cfg):
    """(c_in, c_out, k, size) of every conv of the backbone for one image."""
    convs, c_in, s = [], 3, cfg["input_size"]
    for depth, width in zip(BLOCK_DEPTHS, cfg["block_widths"]):
        for _ in range(depth):
            convs.append((c_in, width, 3, s))
            c_in = width
        s //= 2
    convs.append((c_in, cfg["fc_width"], cfg["fc6_kernel"], s))
    convs.append((cfg["fc_width"], cfg["fc_width"], 1, s))
    return convs


def mlp_layers(cfg):
    dims = [sum(cfg["block_widths"]) + cfg["fc_width"]] + list(cfg["mlp_hidden"]) + [cfg["classes"]]
    return list(zip(dims[:-1], dims[1:]))


def flops(cfg):
    """(train_step_flops, dense_naive_flops, dense_factored_flops); 2 FLOPs per multiply-accumulate."""
    backbone = sum(2.0 * s * s * co * ci * k * k for ci, co, k, s in backbone_convs(cfg))
    layers = mlp_layers(cfg)
    mlp = sum(2.0 * i * o for i, o in layers)
    pixels = float(cfg["input_size"] ** 2)
    train = 3.0 * (cfg["batch_size"] * backbone + cfg["sample_points"] * mlp)
    naive = backbone + pixels * mlp
    chans = list(cfg["block_widths"]) + [cfg["fc_width"]]
    first = sum(2.0 * c * (cfg["input_size"] >> i) ** 2 * layers[0][1] for i, c in enumerate(chans))
    factored = backbone + first + pixels * sum(2.0 * i * o for i, o in layers[1:])
    return train, naive, factored


# ---- the model ----------------------------------------------------------------------------------------------------

def build_model_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ConvBnRelu(nn.Module):
        def __init__(self, c_in, c_out, k):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, k, stride=1, padding=k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class Vgg16Bn(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            c_in = 3
            self.block_names = []
            for b, (depth, width) in enumerate(zip(BLOCK_DEPTHS, cfg["block_widths"])):
                names = []
                for i in range(depth):
                    name = f"conv{b + 1}_{i + 1}"
                    setattr(self, name, ConvBnRelu(c_in, width, 3))
                    names.append(name)
                    c_in = width
                self.block_names.append(names)
            self.fc6 = ConvBnRelu(c_in, cfg["fc_width"], cfg["fc6_kernel"])
            self.fc7 = ConvBnRelu(cfg["fc_width"], cfg["fc_width"], 1)

        def forward(self, x):
            taps = []
            for names in self.block_names:
                for name in names:
                    x = getattr(self, name)(x)
                taps.append(x)
                x = F.max_pool2d(x, 2, 2)
            taps.append(self.fc7(self.fc6(x)))
            return taps

    class Mlp(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.names = []
            for i, (a, b) in enumerate(mlp_layers(cfg)):
                name = f"fc{i + 1}"
                setattr(self, name, nn.Linear(a, b, bias=True))
                self.names.append(name)

        def forward_from_first(self, z1):
            x = z1
            for name in self.names[1:]:
                x = getattr(self, name)(F.relu(x))
            return x

        def forward(self, x):
            return self.forward_from_first(self.fc1(x))

    def lerp(coord, in_len, out_len):
        """Source indices and weights of input-frame coordinates `coord` (long) on an axis of `in_len` samples."""
        scale = (torch.tensor(float(in_len), dtype=torch.float32) / torch.tensor(float(out_len), dtype=torch.float32)).item()
        src = ((coord.to(torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
        i0 = src.to(torch.long).clamp_max(in_len - 1)  # truncation is floor here: src >= 0
        i1 = torch.where(i0 + 1 < in_len, i0 + 1, i0)
        w1 = src - i0.to(torch.float32)
        return i0, i1, 1.0 - w1, w1

    def gather_hypercolumns(taps, points, in_h, in_w):
        """[P, sum c_i]: every tap bilinearly sampled at points [P, 3] = (image, y, x), long."""
        img, y, x = points[:, 0], points[:, 1], points[:, 2]
        cols = []
        for t in taps:
            _, _, h, w = t.shape
            y0, y1, wy0, wy1 = lerp(y, h, in_h)
            x0, x1, wx0, wx1 = lerp(x, w, in_w)
            tl = t.permute(0, 2, 3, 1)  # [n, h, w, c]: indexing gives [P, c]
            v = (tl[img, y0, x0] * (wy0 * wx0)[:, None] + tl[img, y0, x1] * (wy0 * wx1)[:, None]
                 + tl[img, y1, x0] * (wy1 * wx0)[:, None] + tl[img, y1, x1] * (wy1 * wx1)[:, None])
            cols.append(v)
        return torch.cat(cols, dim=1)

    class HypercolumnNet(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.backbone = Vgg16Bn(cfg)
            self.mlp = Mlp(cfg)

        def forward(self, images, points):
            """Logits [P, classes] at the sampled pixels (the engine's forward_sparse)."""
            s = self.cfg["input_size"]
            return self.mlp(gather_hypercolumns(self.backbone(images), points, s, s))

        def dense_naive(self, image):
            """Lesion probability of every pixel of one image [1, 3, s, s]: taps upsampled, concatenated, MLP."""
            s = self.cfg["input_size"]
            ups = [F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False) for t in self.backbone(image)]
            hc = torch.cat(ups, dim=1).flatten(2).transpose(1, 2)[0]  # [s*s, C]
            return torch.softmax(self.mlp(hc).float(), dim=1)[:, 1]

        def dense_factored(self, image):
            """The same with the first MLP layer applied per tap at the tap's resolution, then upsampled and summed."""
            s = self.cfg["input_size"]
            w1, off, z = self.mlp.fc1.weight, 0, None
            for t in self.backbone(image):
                c = t.shape[1]
                u = F.interpolate(F.conv2d(t, w1[:, off:off + c, None, None].to(t.dtype)), size=(s, s),
                                  mode="bilinear", align_corners=False)
                z = u if z is None else z + u
                off += c
            z = z.flatten(2).transpose(1, 2)[0] + self.mlp.fc1.bias.to(z.dtype)
            return torch.softmax(self.mlp.forward_from_first(z).float(), dim=1)[:, 1]

    def dense_factored_bf16(model, image):
        """The engine's factored path with bf16 activations (settings::bf16_activations), emulated in the model's
        dtype with explicit roundings to bf16 where the engine stores bf16: each tap and W1's block of columns
        rounded, each plane their product rounded once; the planes upsampled and summed, plus the bias, ReLU,
        rounded; each later hidden layer a product of rounded operands rounded once, plus the bias, ReLU, rounded;
        the last layer's product of rounded operands plus the bias unrounded (fp32 logits)."""
        def r(x):
            return x.to(torch.bfloat16).to(x.dtype)

        s = model.cfg["input_size"]
        w1, off, z = model.mlp.fc1.weight, 0, None
        for t in model.backbone(image):
            c = t.shape[1]
            plane = r(F.conv2d(r(t), r(w1[:, off:off + c, None, None].to(t.dtype))))
            u = F.interpolate(plane, size=(s, s), mode="bilinear", align_corners=False)
            z = u if z is None else z + u
            off += c
        x = r(F.relu(z.flatten(2).transpose(1, 2)[0] + model.mlp.fc1.bias.to(z.dtype)))
        layers = [getattr(model.mlp, name) for name in model.mlp.names[1:]]
        for layer in layers[:-1]:
            x = r(F.relu(r(x @ r(layer.weight).t()) + layer.bias))
        logits = x @ r(layers[-1].weight).t() + layers[-1].bias
        return torch.softmax(logits.float(), dim=1)[:, 1]

    HypercolumnNet.dense_factored_bf16 = dense_factored_bf16

    def init_like_engine(model, seed):
        """He-normal weights (std sqrt(2 / fan_in)), zero biases, BN gamma 1 and beta 0: the engine's init."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.zero_()

    return HypercolumnNet, init_like_engine


def engine_state_dict(model):
    """The model's tensors under the engine's names (PyTorch's num_batches_tracked dropped)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# ---- helpers ------------------------------------------------------------------------------------------------------

def pick_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False")
    return torch.device(name)


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, warmup, iters, device):
    """Wall-clock ms of `iters` calls after `warmup`, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_pipelined(fn, iters, device):
    """Mean wall-clock ms per call of `iters` calls queued back to back (one synchronisation at the end), as a
    training loop that reads its losses lazily runs, each uploading its batch: the engine's train_step_pipelined_ms."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / max(iters, 1)


def synthetic_batch(cfg, device, gen):
    """Images uniform in [-120, 135), one disc of lesion per mask, points sampled as the engine does (image i n / p:
    grouped by image)."""
    import torch
    n, s, p = cfg["batch_size"], cfg["input_size"], cfg["sample_points"]
    images = torch.rand((n, 3, s, s), generator=gen) * 255.0 - 120.0
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    masks = torch.zeros((n, s, s), dtype=torch.long)
    for i in range(n):
        r = s / 8 + torch.rand((), generator=gen).item() * (s / 3 - s / 8)
        cy, cx = (torch.rand(2, generator=gen) * s).tolist()
        masks[i] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).long()
    img = torch.arange(p) * n // p
    y = torch.randint(0, s, (p,), generator=gen)
    x = torch.randint(0, s, (p,), generator=gen)
    labels = masks[img, y, x]
    points = torch.stack([img, y, x], dim=1)
    return images.to(device), points.to(device), labels.to(device)


def set_tf32(on):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def load_safetensors(path):
    """(tensors, metadata) of a safetensors file of F32 tensors, read directly (no `safetensors` package needed):
    8 bytes little-endian header length, the JSON header, then the raw little-endian data."""
    import torch
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base, out = 8 + n, {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            sys.exit(f"error: {path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=torch.float32) if end > start \
            else torch.zeros(0, dtype=torch.float32)
        out[name] = flat.reshape(info["shape"])
    return out, meta


def write_json_atomic(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- --bench ------------------------------------------------------------------------------------------------------

def bench(args):
    import contextlib

    import torch
    import torch.nn.functional as F

    HypercolumnNet, init_like_engine = build_model_classes()
    device = pick_device(args.device)
    cfg = dict(PRESETS[args.preset])
    torch.backends.cudnn.benchmark = True
    f_train, f_naive, f_factored = flops(cfg)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    for p in precisions:
        if p not in ("fp32", "tf32", "bf16"):
            sys.exit(f"error: unknown precision {p!r} (fp32, tf32, bf16)")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    runs = []
    for precision in precisions:
        set_tf32(precision == "tf32")
        gen = torch.Generator().manual_seed(args.seed)
        model = HypercolumnNet(cfg)
        init_like_engine(model, args.seed)
        model = model.to(device)
        images, points, labels = synthetic_batch(cfg, device, gen)
        if args.compile:
            # PyTorch's best: NHWC activations and the compiled training forward (its backward is
            # compiled through AOTAutograd); dense inference stays eager (channels_last).
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
        opt_kwargs = {"fused": True} if args.fused_adam else {}
        opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"], betas=(0.9, 0.999), eps=1e-8, **opt_kwargs)

        def autocast():
            if precision == "bf16":
                return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            return contextlib.nullcontext()

        last = {}

        # The back-to-back timing uploads each step's batch as a data loader does: from pinned host memory,
        # non_blocking (PyTorch's recommended input pipeline).
        host_images = images.cpu().pin_memory() if device.type == "cuda" else images.clone()

        def train_step(upload=False):
            x = host_images.to(device, non_blocking=True) if upload else images
            if upload and args.compile:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = forward(x, points)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last["loss"] = loss.detach()

        model.train()
        for _ in range(args.warmup):
            train_step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train = time_it(train_step, 0, args.iters, device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        last_loss = float(last["loss"].item())
        pipelined = time_pipelined(lambda: train_step(upload=True), args.iters, device)
        opt.zero_grad(set_to_none=True)

        dense = {"naive": None, "factored": None}
        dense_peak = 0
        if not args.skip_dense:
            model.eval()
            image = images[:1]
            for path in ("naive", "factored"):
                fn = model.dense_naive if path == "naive" else model.dense_factored

                def infer():
                    with torch.inference_mode(), autocast():
                        fn(image).cpu()

                for _ in range(args.warmup):
                    infer()
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                dense[path] = time_it(infer, 0, args.iters, device)
                if device.type == "cuda":
                    dense_peak = max(dense_peak, torch.cuda.max_memory_allocated(device))

        def med(x):
            return statistics.median(x) if x else None

        def rate(flop, ms):
            return flop / (ms * 1e-3) / 1e12 if ms else None

        train_ms, naive_ms, fact_ms = med(train), med(dense["naive"]), med(dense["factored"])
        run = {
            "engine": f"pytorch {torch.__version__}",
            "device": str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
            "device_name": device_name,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "precision": precision,
            "preset": cfg["preset"],
            "input_size": cfg["input_size"],
            "batch_size": cfg["batch_size"],
            "sample_points": cfg["sample_points"],
            "parameter_count": sum(p.numel() for p in model.parameters()),
            "fused_adam": bool(args.fused_adam),
            "compiled": f"torch.compile(mode={args.compile_mode!r}), channels_last" if args.compile else None,
            "warmup": args.warmup,
            "iters": args.iters,
            "timing": "wall clock, device synchronised before and after each iteration; median",
            "train_step_ms": train_ms,
            "train_step_ms_min": min(train),
            "train_step_ms_max": max(train),
            "train_step_samples_ms": train,
            "train_step_gflop": f_train / 1e9,
            "train_step_tflops": rate(f_train, train_ms),
            "train_step_pipelined_ms": pipelined,
            "last_loss": last_loss,
            "dense_path": "naive" if naive_ms is not None else None,
            "dense_infer_ms": naive_ms,
            "dense_infer_tflops": rate(f_naive, naive_ms),
            "dense_naive_ms": naive_ms,
            "dense_naive_gflop": f_naive / 1e9,
            "dense_naive_tflops": rate(f_naive, naive_ms),
            "dense_factored_ms": fact_ms,
            "dense_factored_gflop": f_factored / 1e9,
            "dense_factored_tflops": rate(f_factored, fact_ms),
            "peak_mem_bytes": peak,
            "dense_peak_mem_bytes": dense_peak,
            "peak_mem_measured": device.type == "cuda",
        }
        runs.append(run)
        dense_txt = "" if naive_ms is None else f", dense naive {naive_ms:.2f} ms, factored {fact_ms:.2f} ms"
        print(f"[{precision}] train step {train_ms:.2f} ms ({rate(f_train, train_ms):.2f} TFLOP/s), "
              f"back to back {pipelined:.2f} ms{dense_txt}, "
              f"peak {peak / 2**30:.2f} GiB, loss {last_loss:.4f}", file=sys.stderr)
        print(json.dumps({k: v for k, v in run.items() if k != "train_step_samples_ms"}), flush=True)
        model = forward = opt = images = points = labels = last = None  # free before the next precision
        if device.type == "cuda":
            torch.cuda.empty_cache()
    set_tf32(False)
    if args.json:
        write_json_atomic(args.json, runs)
        print(f"JSON written to {args.json}", file=sys.stderr)


# ---- --parity -----------------------------------------------------------------------------------------------------

def l2_rel(x, ref):
    """||x - ref|| / ||ref|| in float64 (|x - ref| / |ref| for scalars); x takes ref's shape."""
    import torch
    ref = ref.detach().double().cpu()
    x = x.detach().double().cpu().reshape(ref.shape)
    if not bool(torch.isfinite(x).all()):
        return float("inf")
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def max_rel(x, ref):
    """max |x - ref| / max |ref|."""
    ref = ref.detach().double().cpu()
    x = x.detach().double().cpu().reshape(ref.shape)
    den = ref.abs().max().item()
    num = (x - ref).abs().max().item()
    return num / den if den > 0 else num


def emulate_bf16_step(model):
    """Makes `model` compute as the engine in bf16 mixed precision (settings::bf16_conv and bf16_gemm), in its own
    dtype with explicit roundings to bf16 (r) where the engine rounds:
    - every convolution, forward and both backwards: y = r(conv(r(x), r(w))), dx = r(conv_input(r(dy), r(w))),
      dw = r(conv_weight(r(x), r(dy))) (cuDNN on bf16 tensors, fp32 accumulation, a bf16 result);
    - every linear layer: y = r(x) r(W)^T + b, dx = r(dy) r(W), dW = r(dy)^T r(x) (GEMMs on rounded operands, fp32
      results), db = sum(dy).
    Batch norm, ReLU, pooling, the gather and the loss stay in the model's dtype, as the engine's stay fp32."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def r(x):
        return x.to(torch.bfloat16).to(x.dtype)

    class Bf16Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, stride, pad):
            xr, wr = r(x), r(w)
            ctx.save_for_backward(xr, wr)
            ctx.conf = (stride, pad)
            return r(F.conv2d(xr, wr, stride=stride, padding=pad))

        @staticmethod
        def backward(ctx, dy):
            xr, wr = ctx.saved_tensors
            stride, pad = ctx.conf
            dyr = r(dy)
            dx = dw = None
            if ctx.needs_input_grad[0]:
                dx = r(torch.nn.grad.conv2d_input(xr.shape, wr, dyr, stride=stride, padding=pad))
            if ctx.needs_input_grad[1]:
                dw = r(torch.nn.grad.conv2d_weight(xr, wr.shape, dyr, stride=stride, padding=pad))
            return dx, dw, None, None

    class Bf16Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            xr, wr = r(x), r(w)
            ctx.save_for_backward(xr, wr)
            return xr @ wr.t() + b

        @staticmethod
        def backward(ctx, dy):
            xr, wr = ctx.saved_tensors
            dyr = r(dy)
            return dyr @ wr, dyr.t() @ xr, dy.sum(0)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # This model's convolutions: no bias, square stride and padding, no groups or dilation.
            assert m.bias is None and m.groups == 1 and m.dilation == (1, 1), m
            assert m.stride[0] == m.stride[1] and m.padding[0] == m.padding[1], m
            m.forward = lambda x, m=m: Bf16Conv.apply(x, m.weight, m.stride[0], m.padding[0])
        elif isinstance(m, nn.Linear):
            m.forward = lambda x, m=m: Bf16Linear.apply(x, m.weight, m.bias)


def replay(cfg, weights, inputs, steps, device, dtype, dense, bf16=False):
    """Replays the dump's steps in PyTorch at `dtype`: step-0 logits, gradients, running statistics and (when
    `dense`) dense probabilities of image 0, and the loss of every step; everything returned on the host. With
    `bf16`, the model computes as the engine in bf16 mixed precision (emulate_bf16_step)."""
    import torch
    import torch.nn.functional as F

    HypercolumnNet, _ = build_model_classes()
    model = HypercolumnNet(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model = model.to(device=device, dtype=dtype)
    if bf16:
        emulate_bf16_step(model)
    images = inputs["images"].to(device=device, dtype=dtype)
    points = inputs["points"].round().long().to(device)
    labels = inputs["labels"].round().long().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"], betas=(0.9, 0.999), eps=1e-8, foreach=False)
    model.train()
    out = {"loss": []}
    for t in range(steps):
        logits = model(images, points)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        out["loss"].append(loss.detach().cpu())
        if t == 0:
            out["logits"] = logits.detach().cpu()
            for name, p in model.named_parameters():
                out[f"grad.{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu()
            for name, b in model.named_buffers():
                if not name.endswith("num_batches_tracked"):
                    out[f"state1.{name}"] = b.detach().cpu().clone()
            if dense:
                model.eval()
                with torch.no_grad():
                    out["dense_naive"] = model.dense_naive(images[:1]).cpu()
                    out["dense_factored"] = model.dense_factored(images[:1]).cpu()
                    if dtype == torch.float32:
                        # As the engine's --bf16 runs it: the backbone's convolutions rounded too.
                        m16 = copy.deepcopy(model)
                        emulate_bf16_step(m16)
                        out["dense_factored_bf16"] = m16.dense_factored_bf16(images[:1]).cpu()
                        del m16
                model.train()
        opt.step()
    del model, opt, images
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def cosine(x, ref):
    """The cosine of the angle between x and ref, in float64 (0 when either is all zeros)."""
    ref = ref.detach().double().cpu().flatten()
    x = x.detach().double().cpu().flatten()
    den = x.norm().item() * ref.norm().item()
    return (x @ ref).item() / den if den > 0 else 0.0


class Checks:
    """Each check: err = l2_rel(engine, fp64 reference); PASS when err <= max(floor, factor * PyTorch's own l2_rel
    against the same reference), factor FACTOR (4) unless the check says otherwise (the bf16 step's 1.5).
    check_direction: PASS when the engine's cosine with the reference is at least DIRECTION_FACTOR times PyTorch's."""

    FACTOR = 4.0
    DIRECTION_FACTOR = 0.8

    def __init__(self):
        self.passed, self.failed, self.worst, self.rows = 0, 0, {}, []

    def check(self, kind, name, engine, torch32, ref64, floor, factor=FACTOR):
        e_eng, e_t32 = l2_rel(engine, ref64), l2_rel(torch32, ref64)
        limit = max(floor, factor * e_t32)
        ok = e_eng <= limit
        self.passed += ok
        self.failed += not ok
        ratio = e_eng / limit
        if ratio > self.worst.get(kind, (-1.0, "", 0.0, 0.0))[0]:
            self.worst[kind] = (ratio, name, e_eng, e_t32)
        direct = max_rel(engine, torch32)
        self.rows.append({"name": name, "kind": kind, "engine_err": e_eng, "torch32_err": e_t32, "limit": limit,
                          "engine_vs_torch32_max_rel": direct, "pass": ok})
        print(f"{'PASS' if ok else 'FAIL'} {name:<44} engine {e_eng:.2e}  torch32 {e_t32:.2e}  limit {limit:.1e}"
              f"  | engine-vs-torch32 max-rel {direct:.1e}")
        return ok

    def check_direction(self, kind, name, engine, torch32, ref64):
        c_eng, c_t32 = cosine(engine, ref64), cosine(torch32, ref64)
        limit = self.DIRECTION_FACTOR * c_t32
        ok = c_eng >= limit
        self.passed += ok
        self.failed += not ok
        self.rows.append({"name": name, "kind": kind, "engine_cos": c_eng, "torch32_cos": c_t32, "limit": limit,
                          "pass": ok})
        print(f"{'PASS' if ok else 'FAIL'} {name:<44} cosine engine {c_eng:.3f}  torch32 {c_t32:.3f}  limit {limit:.3f}")
        return ok


def parity(args):
    import torch

    d = args.parity
    paths = {k: os.path.join(d, f"{k}.safetensors") for k in ("weights", "inputs", "outputs")}
    for p in paths.values():
        if not os.path.exists(p):
            sys.exit(f"error: {p} is missing; write the dump with: hyperseg-engine bench --parity-dump {d}")
    inputs, meta = load_safetensors(paths["inputs"])
    if meta.get("format") != "hyperseg-engine-parity/1":
        sys.exit(f"error: {paths['inputs']} is not a hyperseg-engine parity dump (format {meta.get('format')!r})")
    cfg = json.loads(meta["config"])
    tf32 = meta.get("tf32") == "true"
    floor_fwd, floor_grad, floor_steps = FLOORS_TF32 if tf32 else FLOORS_FP32
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = False
    print(f"parity: preset {cfg['preset']}, engine ran on {meta.get('device')} (tf32={tf32}); PyTorch "
          f"{torch.__version__} on {device} in fp32 (tf32={tf32}) and in fp64 (the reference); error = l2 relative "
          f"error against fp64; PASS when engine <= max(floor, {Checks.FACTOR:g} x torch32); floors fwd {floor_fwd}, "
          f"grad {floor_grad}, later losses {floor_steps}; the bf16 step: {FACTOR_BF16_STEP:g} x PyTorch's emulation, "
          f"floor {FLOOR_BF16_STEP}, and each gradient's cosine with fp64 >= {Checks.DIRECTION_FACTOR:g} x the emulation's")

    weights, _ = load_safetensors(paths["weights"])
    HypercolumnNet, _ = build_model_classes()
    names = set(engine_state_dict(HypercolumnNet(cfg)))
    if names != set(weights):
        sys.exit(f"error: parameter names differ: only in PyTorch {sorted(names - set(weights))[:10]}, "
                 f"only in the engine {sorted(set(weights) - names)[:10]}")
    outputs, _ = load_safetensors(paths["outputs"])
    steps = outputs["loss"].numel()
    dense = "dense_naive" in outputs

    set_tf32(tf32)
    t0 = time.perf_counter()
    t32 = replay(cfg, weights, inputs, steps, device, torch.float32, dense)
    set_tf32(False)
    t1 = time.perf_counter()
    f64 = replay(cfg, weights, inputs, steps, device, torch.float64, dense)
    print(f"replayed {steps} steps: fp32 {t1 - t0:.1f} s, fp64 {time.perf_counter() - t1:.1f} s")

    c = Checks()
    c.check("logits", "logits (step 0)", outputs["logits"], t32["logits"], f64["logits"], floor_fwd)
    c.check("loss", "loss (step 0)", outputs["loss"][0], t32["loss"][0], f64["loss"][0], floor_fwd)
    for key in (k for k in f64 if k.startswith("grad.")):
        c.check("gradients", key, outputs[key], t32[key], f64[key], floor_grad)
    for key in (k for k in f64 if k.startswith("state1.")):
        c.check("running statistics", key, outputs[key], t32[key], f64[key], floor_fwd)
    if dense:
        for key in ("dense_naive", "dense_factored"):
            c.check("dense probabilities", f"{key} (image 0)", outputs[key], t32[key], f64["dense_naive"],
                    10 * floor_fwd)
        if "dense_factored_bf16" in outputs:
            # Against PyTorch emulating the same roundings in fp32 (dense_factored_bf16).
            c.check("dense probabilities", "dense_factored_bf16 (image 0)", outputs["dense_factored_bf16"],
                    t32["dense_factored_bf16"], f64["dense_naive"], FLOOR_DENSE_BF16)
    for t in range(1, steps):
        c.check("later losses", f"loss (step {t})", outputs["loss"][t], t32["loss"][t], f64["loss"][t], floor_steps)
    if "bf16.logits" in outputs:
        # Step 0 in bf16 mixed precision, against PyTorch emulating the engine's roundings (emulate_bf16_step).
        set_tf32(False)
        b16 = replay(cfg, weights, inputs, 1, device, torch.float32, False, bf16=True)
        fl, fa = FLOOR_BF16_STEP, FACTOR_BF16_STEP
        c.check("bf16 step", "bf16 logits (step 0)", outputs["bf16.logits"], b16["logits"], f64["logits"], fl, fa)
        c.check("bf16 step", "bf16 loss (step 0)", outputs["bf16.loss"][0], b16["loss"][0], f64["loss"][0], fl, fa)
        for key in (k for k in f64 if k.startswith("grad.")):
            c.check("bf16 step", f"bf16 {key}", outputs[f"bf16.{key}"], b16[key], f64[key], fl, fa)
            # Where bf16's own error is near 100% (the backbone at initialisation) the l2 check above cannot fail
            # even for a gradient of zeros; the direction can.
            c.check_direction("bf16 step direction", f"bf16 {key} (direction)", outputs[f"bf16.{key}"], b16[key],
                              f64[key])
    print("closest to its limit, per kind: " + "; ".join(
        f"{k} {v[1]} (engine {v[2]:.1e}, torch32 {v[3]:.1e})" for k, v in c.worst.items()))
    print(f"parity: {c.passed} passed, {c.failed} failed")
    if args.json:
        write_json_atomic(args.json, {"passed": c.passed, "failed": c.failed, "tf32": tf32, "device": str(device),
                                      "factor": Checks.FACTOR, "checks": c.rows})
    return 0 if c.failed == 0 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bench", action="store_true", help="time a training step and dense inference")
    mode.add_argument("--parity", metavar="DIR", help="replay an engine parity dump and compare")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="--bench only (--parity reads the dump's)")
    ap.add_argument("--precision", default="fp32,tf32,bf16", help="comma list of fp32, tf32, bf16 (autocast)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True)")
    ap.add_argument("--compile", action="store_true",
                    help="--bench: torch.compile the training forward, channels_last (with bf16: PyTorch's best step)")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode with --compile (default, reduce-overhead, max-autotune, ...)")
    ap.add_argument("--json", metavar="FILE", help="write the results (a list of runs, or the parity summary)")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    if args.bench:
        bench(args)
        return 0
    return parity(args)


if __name__ == "__main__":
    sys.exit(main())
