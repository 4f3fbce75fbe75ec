"""NCHW against NHWC (``runtime.channels_last``) activations for a network on this CPU.

    python benchmarks/memory_format.py [--model small_cnn] [--repeats 5] [--threads 2]
        [--out benchmarks/results/memory_format.json]

Measures, alternately (NCHW, NHWC, NCHW, NHWC, ...) in one invocation, what one epoch of the demo
(``experiment=cpu_baseline``) spends in the network: training steps (forward, backward and an
AdamW step on batches of 128 grey 64 x 64 crops) and the validation pass (forward in eval mode on
batches of 32, as Lightning runs it: BatchNorm not folded, gradients off). The crops are random:
a convolution's cost does not depend on the pixel values. Prints crops per second per format
(median over repeats) and the NHWC / NCHW ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from nscfate.files import atomic_write
from nscfate.models import create_model

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def train_rate(
    net: torch.nn.Module, batches: list[torch.Tensor], fmt: torch.memory_format
) -> float:
    """Crops per second through forward, backward and an optimizer step."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-6)
    labels = torch.zeros(len(batches[0]), dtype=torch.long)
    start = time.perf_counter()
    for x in batches:
        loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=fmt)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sum(map(len, batches)) / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(net: torch.nn.Module, batches: list[torch.Tensor], fmt: torch.memory_format) -> float:
    """Crops per second through the network in eval mode."""
    net.eval()
    start = time.perf_counter()
    for x in batches:
        net(x.contiguous(memory_format=fmt))
    return sum(map(len, batches)) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/memory_format.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    train_batches = [torch.rand(128, 1, 64, 64, generator=generator) for _ in range(8)]
    val_batches = [torch.rand(32, 1, 64, 64, generator=generator) for _ in range(40)]
    base = create_model(args.model, pretrained=False)
    nets = {name: copy.deepcopy(base).to(memory_format=fmt) for name, fmt in FORMATS.items()}
    for name, fmt in FORMATS.items():  # warm-up: first calls pick kernels
        train_rate(nets[name], train_batches[:1], fmt)
        eval_rate(nets[name], val_batches[:2], fmt)
    rates: dict[str, dict[str, list[float]]] = {n: {"train": [], "eval": []} for n in FORMATS}
    for _ in range(args.repeats):
        for name, fmt in FORMATS.items():
            rates[name]["train"].append(train_rate(nets[name], train_batches, fmt))
            rates[name]["eval"].append(eval_rate(nets[name], val_batches, fmt))
    record = {"model": args.model, "threads": args.threads, "repeats": args.repeats}
    for name in FORMATS:
        for step in ("train", "eval"):
            median = statistics.median(rates[name][step])
            record[f"{name}_{step}_crops_per_s"] = round(median)
            print(f"{name} {step}: {median:.0f} crops/s", flush=True)
    for step in ("train", "eval"):
        pairs = [b / a for a, b in zip(rates["nchw"][step], rates["nhwc"][step], strict=True)]
        record[f"{step}_ratio_pairs"] = [round(r, 2) for r in pairs]
        record[f"{step}_ratio_median"] = round(statistics.median(pairs), 2)
        print(
            f"NHWC / NCHW, {step}: {statistics.median(pairs):.2f} (pairs {record[f'{step}_ratio_pairs']})"
        )
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
