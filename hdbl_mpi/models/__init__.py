"""Model zoo: ResNet-18 with CIFAR or ImageNet stem, and a small ResNet for CPU demos and tests."""

from hdbl_mpi.models.resnet import MODEL_NAMES, build_model, set_dropout

__all__ = ["MODEL_NAMES", "build_model", "set_dropout"]
