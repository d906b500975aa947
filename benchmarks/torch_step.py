"""A PyTorch Xception's plain training step against our Keras one: same CPU, threads, input and batch.

The network is written here from Chollet (2017) with the topology of `deepnoise_tf/models.py`: a 6-channel
7x7/2 stem (zero padding 3), batch norm (epsilon 1e-3, Keras momentum 0.99), separable convolutions
(3x3 depthwise then 1x1 pointwise, no bias), 3 entry blocks, 8 middle blocks, the exit block, two
final separable convs and a global average pool of the last batch norm (no final ReLU); every stage's
channels scaled by the width multiplier and rounded to multiples of 8, as in `models.scale_filters`.
The step is the one `benchmarks/model.py` times for Keras: forward in training mode, mean squared
error of the embedding against a fixed random target, backward, plain SGD on the weights.

This script needs only torch and numpy (no TensorFlow: the two libraries' thread pools would fight).
With `--keras_python` it also runs `benchmarks/model.py` with that interpreter, the same settings and
thread counts, alternating single calls with torch so both see the same share of a busy machine.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python benchmarks/torch_step.py --size 128 --width 1.0 --batch 4 \\
        --keras_python /tmp/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _report
import numpy as np
import torch
from torch import nn
from torch.nn import functional

NUM_CHANNELS = 6
# Chollet's Xception, as deepnoise_tf.models.XCEPTION_WIDTHS: stem, conv2, entry blocks 2-4,
# middle flow, exit block 13 (two convs), block 14 (two convs).
XCEPTION_WIDTHS = {
    "stem": 32,
    "conv2": 64,
    "entry": (128, 256, 728),
    "middle": 728,
    "exit": (728, 1024),
    "final": (1536, 2048),
}
NUM_MIDDLE_BLOCKS = 8
KERAS_EPSILON = 1e-3
KERAS_MOMENTUM = 0.99  # Keras keeps `momentum` of the old statistic; torch's momentum is 1 - that
LEARNING_RATE = 1e-3  # as benchmarks/model.py


def scale_filters(filters: int, width: float) -> int:
    """`models.scale_filters`: channels x width, rounded to a multiple of 8, at least 8."""
    return max(8, int(round(filters * width / 8.0)) * 8)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_EPSILON, momentum=1.0 - KERAS_MOMENTUM)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D(filters, 3, padding="same", use_bias=False): depthwise, then 1x1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class DownsamplingBlock(nn.Module):
    """Entry/exit block: [ReLU] sepconv-BN-ReLU-sepconv-BN, max-pool /2, plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, filters: tuple[int, int], relu_first: bool):
        super().__init__()
        self.relu_first = relu_first
        self.residual = nn.Conv2d(in_channels, filters[1], 1, stride=2, bias=False)
        self.residual_bn = batch_norm(filters[1])
        self.sepconv1 = SeparableConv(in_channels, filters[0])
        self.bn1 = batch_norm(filters[0])
        self.sepconv2 = SeparableConv(filters[0], filters[1])
        self.bn2 = batch_norm(filters[1])
        # Keras "same" pooling of 3x3/2 gives ceil(n/2) outputs, as padding 1 does here.
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        residual = self.residual_bn(self.residual(x))
        if self.relu_first:
            x = functional.relu(x)
        x = functional.relu(self.bn1(self.sepconv1(x)))
        x = self.bn2(self.sepconv2(x))
        return self.pool(x) + residual


class MiddleBlock(nn.Module):
    """Three ReLU-sepconv-BN units with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(channels, channels) for _ in range(3))
        self.norms = nn.ModuleList(batch_norm(channels) for _ in range(3))

    def forward(self, x):
        residual = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(conv(functional.relu(x)))
        return x + residual


class Xception(nn.Module):
    """Images [N, 6, H, W] -> embeddings [N, D]: `models.xception(stem="7x7", width=...)`."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        w = {
            key: tuple(scale_filters(f, width) for f in value)
            if isinstance(value, tuple)
            else scale_filters(value, width)
            for key, value in XCEPTION_WIDTHS.items()
        }
        self.stem = nn.Conv2d(NUM_CHANNELS, w["stem"], 7, stride=2, padding=3, bias=False)
        self.stem_bn = batch_norm(w["stem"])
        self.conv2 = nn.Conv2d(w["stem"], w["conv2"], 3, bias=False)  # "valid", as Keras
        self.conv2_bn = batch_norm(w["conv2"])
        blocks, channels = [], w["conv2"]
        for index, filters in enumerate(w["entry"]):
            blocks.append(DownsamplingBlock(channels, (filters, filters), relu_first=index > 0))
            channels = filters
        blocks += [MiddleBlock(w["middle"]) for _ in range(NUM_MIDDLE_BLOCKS)]
        blocks.append(DownsamplingBlock(w["middle"], w["exit"], relu_first=True))
        self.blocks = nn.Sequential(*blocks)
        self.final1 = SeparableConv(w["exit"][1], w["final"][0])
        self.final1_bn = batch_norm(w["final"][0])
        self.final2 = SeparableConv(w["final"][0], w["final"][1])
        self.final2_bn = batch_norm(w["final"][1])
        self.embedding_dim = w["final"][1]

    def forward(self, images):
        x = functional.relu(self.stem_bn(self.stem(images)))
        x = functional.relu(self.conv2_bn(self.conv2(x)))
        x = self.blocks(x)
        x = functional.relu(self.final1_bn(self.final1(x)))
        x = self.final2_bn(self.final2(x))  # no ReLU before pooling, as DeepNoise
        return x.mean(dim=(2, 3))


def torch_steps(size: int, width: float, batch: int, channels_last: bool, seed: int = 0):
    """(model, forward(), train(phases)): the step on fixed random images, its phases timed."""
    torch.manual_seed(seed)
    model = Xception(width)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(batch, NUM_CHANNELS, size, size)).astype(np.float32))
    targets = torch.from_numpy(rng.normal(size=(batch, model.embedding_dim)).astype(np.float32))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def forward():
        model.eval()
        with torch.no_grad():
            return model(images)

    def train(phases: dict):
        model.train()
        start = time.perf_counter()
        loss = torch.mean(torch.square(model(images) - targets))
        forward_done = time.perf_counter()
        gradients = torch.autograd.grad(loss, parameters)
        backward_done = time.perf_counter()
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.sub_(LEARNING_RATE * gradient)
        phases["forward"].append(forward_done - start)
        phases["backward"].append(backward_done - forward_done)
        phases["update"].append(time.perf_counter() - backward_done)
        return loss

    return model, forward, train


class TorchRunner:
    """This process's PyTorch step; `call(name)` returns the seconds of one forward or train call."""

    def __init__(self, arguments):
        self.name = f"torch {torch.__version__}"
        self.phases = {"forward": [], "backward": [], "update": []}
        model, self._forward, self._train = torch_steps(
            arguments.size, arguments.width, arguments.batch, arguments.channels_last
        )
        self.params_m = sum(p.numel() for p in model.parameters()) / 1e6

    def call(self, name: str) -> float:
        start = time.perf_counter()
        self._forward() if name == "forward" else self._train(self.phases)
        return time.perf_counter() - start

    def close(self):
        pass


class KerasRunner:
    """benchmarks/model.py --serve in `--keras_python` (TensorFlow in its own process)."""

    def __init__(self, arguments, sync_batch_norm: str):
        self.name = f"keras (sync BN {sync_batch_norm}, XLA {arguments.keras_xla})"
        command = [
            arguments.keras_python,
            str(Path(__file__).with_name("model.py")),
            "--serve",
            "--architectures=xception",
            f"--sizes={arguments.size}",
            f"--widths={arguments.width}",
            f"--batch={arguments.batch}",
            "--mixed_precision=float32",
            f"--xla={arguments.keras_xla}",
            f"--sync_batch_norm={sync_batch_norm}",
            f"--intra_op_threads={arguments.threads}",
            f"--inter_op_threads={arguments.inter_op_threads}",
        ]
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
        self._log = tempfile.TemporaryFile("w+")
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env=environment,
        )  # fmt: skip
        for line in self._process.stdout:
            if line.startswith("ready"):
                self.params_m = float(line.split("params_m=")[1])
                break
        else:
            self._fail()

    def _fail(self):
        self._log.seek(0)
        raise RuntimeError(f"benchmarks/model.py --serve failed:\n{self._log.read()[-3000:]}")

    def call(self, name: str) -> float:
        self._process.stdin.write(name + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._fail()
        return float(line)

    def close(self):
        self._process.stdin.close()
        self._process.wait(timeout=60)
        self._log.close()


def alternate(runners, name: str, steps: int) -> dict[str, list[float]]:
    """`steps` rounds of one `name` call per runner, the order rotated every round."""
    seconds = {runner.name: [] for runner in runners}
    for round_index in range(steps):
        shift = round_index % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            seconds[runner.name].append(runner.call(name))
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed calls of each, alternating")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument(
        "--inter_op_threads", type=int, default=0,
        help="0 = each library's default, as training runs (TensorFlow's pool runs independent "
        "ops of the step graph side by side; torch's eager step has no use for its pool)",
    )  # fmt: skip
    parser.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=False,
        help="torch.channels_last (NHWC, Keras's layout) instead of NCHW",
    )  # fmt: skip
    parser.add_argument("--keras_python", default="", help="interpreter with TensorFlow + Keras")
    parser.add_argument("--keras_sync_batch_norm", default="on", help="on, off or on,off")
    parser.add_argument("--keras_xla", choices=("off", "on"), default="off")
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)

    torch.set_num_threads(arguments.threads)
    if arguments.inter_op_threads:
        torch.set_num_interop_threads(arguments.inter_op_threads)
    print(
        f"torch {torch.__version__}: intra-op threads {torch.get_num_threads()}, inter-op "
        f"{torch.get_num_interop_threads()}, oneDNN {torch.backends.mkldnn.is_available()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
        flush=True,
    )
    started = time.perf_counter()
    runners = [TorchRunner(arguments)]
    syncs = arguments.keras_sync_batch_norm.split(",") if arguments.keras_python else []
    try:
        runners += [KerasRunner(arguments, sync) for sync in syncs]
        for runner in runners:
            for name in ("forward", "train"):
                for _ in range(arguments.warmup):
                    runner.call(name)
        runners[0].phases = {phase: [] for phase in runners[0].phases}  # drop the warm-up's
        forward = alternate(runners, "forward", arguments.steps)
        train = alternate(runners, "train", arguments.steps)
    finally:
        for runner in runners:
            runner.close()
    total = time.perf_counter() - started

    rows = []
    for runner in runners:
        row = {
            "framework": runner.name,
            "params_m": runner.params_m,
            "forward_images_per_s": arguments.batch / statistics.median(forward[runner.name]),
            "train_images_per_s": arguments.batch / statistics.median(train[runner.name]),
            "best_train_images_per_s": arguments.batch / min(train[runner.name]),
            "phases_ms": {
                phase: 1e3 * statistics.median(values)
                for phase, values in getattr(runner, "phases", {}).items()
            },
        }
        rows.append(row)
        print("torch_step " + json.dumps(row), flush=True)
    load = _report.load_average()
    torch_row = rows[0]
    summary = (
        f"torch_step_summary size={arguments.size} width={arguments.width:g} "
        f"batch={arguments.batch} threads={arguments.threads} "
        f"inter_op={arguments.inter_op_threads or 'default'} "
        f"torch_train_images_per_s={torch_row['train_images_per_s']:.2f} (median)"
    )
    for row in rows[1:]:
        summary += (
            f" | {row['framework']}: {row['train_images_per_s']:.2f} img/s, keras/torch median "
            f"{row['train_images_per_s'] / torch_row['train_images_per_s']:.2f}, best "
            f"{row['best_train_images_per_s'] / torch_row['best_train_images_per_s']:.2f}"
        )
    summary += f" | load {load} total_s={total:.0f}"
    print(summary, flush=True)
    bullets = [
        f"- threads: intra-op {arguments.threads}, inter-op "
        f"{arguments.inter_op_threads or 'each library default'} "
        f"(torch.set_num_threads / tf.config.threading); OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; torch layout "
        f"{'channels_last (NHWC)' if arguments.channels_last else 'NCHW'}; Keras NHWC",
        f"- xception (7x7 stem) {arguments.size}x{arguments.size}x6, width {arguments.width:g}, "
        f"batch {arguments.batch}, float32; train = forward (training mode) + MSE on the "
        f"embedding + backward + SGD; {arguments.warmup} untimed then {arguments.steps} timed "
        "calls of each framework, alternating call by call (each framework in its own process) so "
        f"both see the same load; img/s from the median call, 'best' from the fastest; total wall "
        f"time {total:.0f} s; load average at the end {load} (2 shared cores)",
    ]
    body = _report.table(
        (
            "framework",
            "trainable params (M)",
            "forward img/s",
            "train img/s",
            "best train img/s",
            "torch fwd / bwd / update ms",
        ),  # fmt: skip
        [
            (
                row["framework"],
                f"{row['params_m']:.2f}",
                f"{row['forward_images_per_s']:.2f}",
                f"{row['train_images_per_s']:.2f}",
                f"{row['best_train_images_per_s']:.2f}",
                " / ".join(f"{value:.0f}" for value in row["phases_ms"].values()) or "-",
            )
            for row in rows
        ],
    )
    body += ["", "Summary: " + summary.removeprefix("torch_step_summary ")]
    title = (
        f"Keras vs PyTorch Xception training step, benchmarks/torch_step.py ({_report.timestamp()})"
    )
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv, versions=versions)


if __name__ == "__main__":
    main()
