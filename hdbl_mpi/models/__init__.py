"""The models `model.name` can name (hdbl_mpi.models.zoo): the papers' ResNet-18, a small ResNet for CPU demos,
the source documents' LeNet-5 and MLP, any torchvision classifier, and a user's own factory."""

from hdbl_mpi.models.zoo import MODEL_NAMES, build_model, model_notes, set_dropout

__all__ = ["MODEL_NAMES", "build_model", "model_notes", "set_dropout"]
