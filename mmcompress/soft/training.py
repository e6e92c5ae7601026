"""The soft family's training tasks, registered in one place (each family registers its tasks in its
``training.py``, imported by the family package; recipes name them with ``task:``)."""
from ..training.tasks import register_task
from .autocompressor import build_autocompressor_task
from .gist import build_gist_task
from .tasks import build_icae, build_kv, build_meanpool
from .xrag_task import build as build_xrag

register_task("icae", sections=("init_from",))(build_icae)
register_task("kv", sections=("init_from",))(build_kv)
register_task("meanpool", sections=("init_from",))(build_meanpool)
register_task("xrag", sections=("objective",))(build_xrag)
register_task("gist")(build_gist_task)
register_task("autocompressor")(build_autocompressor_task)
