"""Self-contained checkpoints: the modeling code and a complete ``auto_map`` saved next to the weights.

``save_pretrained`` copies this file with the modeling code into every checkpoint (it is imported as
``from .hub_utils import ...``), so it imports nothing but transformers.
"""


class CodeInCheckpointMixin:
    """Mixin for a ``PreTrainedModel`` family whose checkpoints carry their own code.

    The family's model classes are registered with ``register_for_auto_class`` (at the end of their modeling
    file), so transformers' own ``save_pretrained`` copies the file defining the saved class and, recursively,
    every file it imports with ``from .x import y`` into the checkpoint, before any upload
    (``save_pretrained(push_to_hub=True)``, ``push_to_hub``, the Trainer's checkpoints). transformers would put
    only the saved class into ``config.auto_map``; this mixin adds every Auto class of the family
    (``checkpoint_auto_map``, merged over entries the config already has), so ``AutoConfig``, ``AutoModel``
    and the task Auto class all load the folder with ``trust_remote_code=True`` on a machine without this
    package. With the package imported, its registered classes are used instead.
    """

    checkpoint_auto_map: dict[str, str] = {}  # Auto class name -> "file_stem.ClassName"

    def save_pretrained(self, save_directory, **kwargs):
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self.checkpoint_auto_map}
        super().save_pretrained(save_directory, **kwargs)
