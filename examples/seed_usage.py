"""The seed document's usage example, as written, with device=torch.device('cpu').

Only `mnist_loader` is defined here (the seed leaves it to the reader): the first two
batches of 128 MNIST training images, so that the example runs in a few minutes on a CPU.
"""
import itertools

import torch

from core.data import mnist
from core.seeding import seeded_loader

mnist_loader = itertools.islice(seeded_loader(mnist(train=True), batch_size=128, seed=0), 2)

# ---- the seed's example, verbatim but for the import path and the device ----
from core.diffusion import DiffusionProcess

# Initialize with MNIST parameters
diffusion = DiffusionProcess(
    image_size=28,
    channels=1,
    hidden_dims=[32, 64, 128],
    noise_steps=1000,
    device=torch.device('cpu')
)

# Train on MNIST data
for batch in mnist_loader:
    loss = diffusion.train_step(batch)

# Generate samples
samples = diffusion.sample(num_samples=64)
# ---- end of the seed's example ----

print(f"loss={loss:.4f} samples={tuple(samples.shape)} range=[{samples.min():.2f}, {samples.max():.2f}]")
