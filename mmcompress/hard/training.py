"""The hard family's training tasks, registered in one place (each family registers its tasks in its
``training.py``, imported by the family package; recipes name them with ``task:``)."""
from ..training.tasks import register_task
from .llmlingua2_train import build_llmlingua2_task

register_task("llmlingua2", sections=("teacher", "export_dir", "register_default"))(build_llmlingua2_task)
