"""``mmcompress serve``: the compression service and the OpenAI-compatible compressing proxy (needs the ``serve``
extra). :func:`mmcompress.serve.app.create_app` builds the FastAPI application; importing this package alone
imports neither FastAPI nor a model."""
