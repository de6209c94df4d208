"""Self-contained checkpoints: the modeling code and a complete ``auto_map`` saved next to the weights.

``save_pretrained`` copies this file with the modeling code into every checkpoint (it is imported as
``from .hub_utils import ...``), so it imports nothing but transformers.
"""

from transformers.dynamic_module_utils import custom_object_save


class CodeInCheckpointMixin:
    """Mixin for a ``PreTrainedModel`` family whose checkpoints carry their own code.

    ``save_pretrained`` (and so ``push_to_hub`` and the Trainer's checkpoints) writes, besides the weights and
    config, the file defining the model class and, recursively, every file it imports with ``from .x import y``;
    ``config.auto_map`` names every Auto class of the family (``checkpoint_auto_map``), not only the saved one
    as ``register_for_auto_class`` would. ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` then
    works on a machine without this package, while with the package imported its registered classes are used.
    """

    checkpoint_auto_map: dict[str, str] = {}  # Auto class name -> "file_stem.ClassName"

    def save_pretrained(self, save_directory, **kwargs):
        self.config.auto_map = dict(self.checkpoint_auto_map)
        super().save_pretrained(save_directory, **kwargs)
        if kwargs.get("is_main_process", True):
            custom_object_save(self, save_directory)
