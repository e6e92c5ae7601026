"""Token scorers: causal-LM self-information (batched, windowed, conditional), the unigram fallback, and word keep
probabilities from token classifiers (LLMLingua-2)."""
from .causal_lm import CausalLMScorer, TokenScores
from .token_classifier import TokenClassifierScorer, WordProbs
from .unigram import UnigramScorer

__all__ = ["CausalLMScorer", "TokenClassifierScorer", "TokenScores", "UnigramScorer", "WordProbs"]
