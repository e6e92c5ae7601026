"""Adapters for the frameworks users already build with: :mod:`.langchain` (a LangChain document compressor)
and :mod:`.llamaindex` (a LlamaIndex node postprocessor). Each needs its extra: ``pip install
mmcompress[langchain]`` / ``mmcompress[llamaindex]``; importing this package needs neither."""
