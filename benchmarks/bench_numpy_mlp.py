"""One training epoch of the chapter 3.2 MLP (784-256-10, ReLU, SGD momentum, batch 128, float32)
on all 60,000 Fashion-MNIST training images: pure NumPy (lm4f.tensor) beside PyTorch eager.

Best of several epochs, with 1 and with 2 threads, wall clock and CPU time. On a shared machine the
wall clock also counts time spent waiting for a core; with one thread the CPU time is what the
same epoch takes on an idle machine.
"""

import time
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from lm4f.data import fashion_mnist
from lm4f.tensor import MLP, SGD, softmax_cross_entropy

HIDDEN, BATCH_SIZE = 256, 128


def _data():
    images, labels = fashion_mnist("train")
    images = images.reshape(-1, 784).astype(np.float32) / 255
    return (images - images.mean()) / images.std(), labels


def _numpy_epoch(images, labels, model, optimizer, rng):
    order = rng.permutation(len(images))
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start:start + BATCH_SIZE]
        softmax_cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()


def _torch_epoch(images, labels, model, optimizer):
    import torch

    order = torch.randperm(len(images))
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start:start + BATCH_SIZE]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()


def _best(epoch, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        epoch()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def run():
    import torch

    images, labels = _data()
    torch_images, torch_labels = torch.from_numpy(images), torch.from_numpy(labels)
    figures = []
    threads_before = torch.get_num_threads()
    for threads, repeats in ((1, 3), (2, 2)):
        rng = np.random.default_rng(0)
        model = MLP((784, HIDDEN, 10), rng)
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
        with threadpool_limits(threads):
            numpy_wall, numpy_cpu = _best(partial(_numpy_epoch, images, labels, model, optimizer, rng), repeats)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        torch_model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
        torch_optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.01, momentum=0.9)
        torch_wall, torch_cpu = _best(partial(_torch_epoch, torch_images, torch_labels, torch_model, torch_optimizer),
                                      repeats)
        context = {"device": "cpu", "threads": threads, "images": len(images), "batch": BATCH_SIZE}
        unit = f"s (best of {repeats})"
        figures += [
            {"metric": f"numpy epoch wall, {threads} thread(s)", "value": numpy_wall, "unit": unit, **context},
            {"metric": f"numpy epoch cpu, {threads} thread(s)", "value": numpy_cpu, "unit": unit, **context},
            {"metric": f"torch eager epoch wall, {threads} thread(s)", "value": torch_wall, "unit": unit, **context},
            {"metric": f"torch eager epoch cpu, {threads} thread(s)", "value": torch_cpu, "unit": unit, **context},
        ]
    torch.set_num_threads(threads_before)
    return figures
