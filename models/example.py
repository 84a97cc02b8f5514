"""An example of your own model for batchscale: a 2-hidden-layer MLP of a chosen width.

Use it with, in params.yaml (or a file layered on it with --configfile):

    model:
      name: custom
      factory: models/example.py:make_model
      kwargs: {width: 64}

batchscale calls `make_model(in_features, num_classes, **kwargs)` once per seed, after seeding
torch's random number generator with that seed, so draw the initial weights in here (as the
layers' constructors do) and nowhere else. The module it returns gets a batch of examples
shaped as the data set's (batch, 40) for mnist1d, (batch, 28, 28) for mnist, (batch, 64) for
digits, your x_train's shape for npz, and returns (batch, num_classes) logits (no softmax: the
loss is cross-entropy on logits). Before any job starts, batchscale builds it and runs it on two
examples to check exactly this.

For now the model must have no buffers (BatchNorm's running statistics), and its forward
should draw no random numbers (Dropout): every seed's copy is trained side by side with
torch.func.vmap, or one after another.
"""

from torch import nn


def make_model(in_features: int, num_classes: int, width: int = 64) -> nn.Module:
    """in_features values per example -> width -> width -> num_classes logits, with ReLUs."""
    return nn.Sequential(
        nn.Flatten(),  # (batch, 28, 28) images become (batch, 784); sequences stay as they are
        nn.Linear(in_features, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )
