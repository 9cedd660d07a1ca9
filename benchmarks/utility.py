"""Utility-harness overhead: one regime's classifier training in `synthmed utility` vs a plain PyTorch loop.

Both train the same classifier (conf/classifier/cnn.yaml: MONAI's residual Classifier) from the same initial
weights on the same phantom images with the same batch draws (with replacement, seeded), AdamW, binary
cross-entropy on one logit. The harness adds what it does per training: the validation loss every `eval_every` steps
with a copy of the best weights, and the final reload. Runs alternate (plain, harness, plain, ...) so that load drift
hits both; one thread each, as the harness runs.

    python benchmarks/utility.py [--steps 300] [--repeats 3] [--size 32] [--batch 32]

Prints classifier trainings per minute for both and the ratio (target: the harness within 10 %, ratio >= 0.90).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.classifiers import CNNClassifier
from synthmed.evaluation.utility import LabelledSplit, build_regime, fit


def plain_loop(classifier: CNNClassifier, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.nn.Module:
    """The same training as `fit`, without validation or model selection."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = classifier.head(images[0])
    opt = torch.optim.AdamW(net.parameters(), lr=classifier.lr, weight_decay=classifier.weight_decay)
    weights = torch.ones(len(labels), dtype=torch.float64)
    net.train()
    for _ in range(classifier.steps):
        idx = torch.multinomial(weights, classifier.batch_size, replacement=True, generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(images[idx])[:, 0], labels[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = lambda name, n: LabelledSplit.of(PhantomDataset(name, size=args.size, n_train=n, n_val=n), name, "bench")
    train, val = split("train", 256), split("val", 64)
    classifier = CNNClassifier(steps=args.steps, batch_size=args.batch, eval_every=50)
    regime = build_regime("real", train, None)
    plain_loop(classifier, train.images, train.labels, seed=0)  # warm-up: allocator, MONAI imports, kernels
    times = {"plain": [], "harness": []}
    for r in range(args.repeats):
        times["plain"].append(timed(lambda r=r: plain_loop(classifier, train.images, train.labels, seed=r)))
        times["harness"].append(timed(lambda r=r: fit(classifier, regime, (val.images, val.labels), seed=r)))
    per_min = {k: 60.0 / statistics.median(v) for k, v in times.items()}
    print(f"classifier: MONAI Classifier {classifier.channels}, {args.steps} steps, batch {args.batch}, "
          f"{args.size} px, 1 thread, median of {args.repeats}")
    for name, rate in per_min.items():
        print(f"  {name:8s} {rate:7.2f} trainings/min  ({statistics.median(times[name]):.2f} s each)")
    ratio = per_min["harness"] / per_min["plain"]
    print(f"harness / plain throughput: {ratio:.3f} (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
