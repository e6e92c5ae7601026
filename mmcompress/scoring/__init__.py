"""Token scorers: causal-LM self-information (batched, windowed, conditional) and the unigram fallback."""
from .causal_lm import CausalLMScorer, TokenScores
from .unigram import UnigramScorer

__all__ = ["CausalLMScorer", "TokenScores", "UnigramScorer"]
