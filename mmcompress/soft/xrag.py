"""xRAG (Cheng et al., NeurIPS 2024): one projected retrieval embedding per document.

A frozen sentence encoder (all-MiniLM-L6-v2 by default, any Hugging Face encoder by name) embeds each document; a
small trainable projector (``Linear -> GELU -> Linear``, xRAG's ``mlp2x_gelu``) maps that embedding to ``k`` vectors
in the LLM's input-embedding space. The frozen LLM reads them through ``inputs_embeds`` where the prompt has an xRAG
placeholder. Only the projector is trained, so document embeddings can be computed once and reused.

Differences from the reference code (Hannibal046/xRAG), on purpose:

- no ``<xRAG>`` token is added to the LLM's vocabulary (that would resize a frozen embedding matrix): the prompt is
  rendered with a marker string, split there, and the projected vectors are spliced in between the pieces' tokens;
- documents longer than the encoder's window are split into chunks, each giving ``k`` tokens (xRAG's
  ``split_background`` at 180 tokens), and every chunk of every document in a batch is encoded in one pass;
- the loss is computed on the label positions only: hidden states are sliced before the LM head.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError, InvalidPromptError
from ..prompt import Role
from ..registry import register_compressor
from ..results import SoftPrompt, SoftSegment
from .base import SoftCompressor, SoftConfig
from .sentence_encoder import SentenceEncoder

MARKER = "<|xrag|>"  # stands for the projected tokens while a prompt is rendered as text; never tokenized
XRAG_TOKEN = "<xRAG>"  # xRAG's placeholder token: where each projected vector goes in the tokenized prompt
SLOT = -1  # token id of a placeholder position before the projected vectors are spliced in

# Paraphrase-pretraining instructions, as in xRAG (src/language_modeling/utils.py, ParaphraseInstructions).
PARAPHRASE_INSTRUCTIONS = [
    "Background: {xrag} means the same as",
    "Background: {xrag} Can you put the above sentences in your own terms?",
    "Background: {xrag} Please provide a reinterpretation of the preceding background text.",
    "These two expressions are equivalent in essence:\n(1) {xrag}\n(2)",
    "Background: {xrag} is a paraphrase of what?",
    "Background: {xrag} Could you give me a different version of the background sentences above?",
    "In other words, background: {xrag} is just another way of saying:",
    "You're getting across the same point whether you say background: {xrag} or",
    "Background: {xrag} After unpacking the ideas in the background information above, we got:",
    "Background: {xrag} Please offer a restatement of the background sentences I've just read.",
    "Background: {xrag}, which also means:",
    "Strip away the mystery, and you'll find background: {xrag} is simply another rendition of:",
    "The essence of background: {xrag} is captured again in the following statement:",
]
# How documents are shown to the reader (xRAG's fine-tuning prompt), for soft tokens and full text alike.
RAG_TEMPLATE = "Refer to the background document: {background}\n\n{question}"
QA_INSTRUCTION = "Answer the question with a short phrase."


# ------------------------------------------------------------------------------------------------------ projector
class Projector(nn.Module):
    """xRAG's modality bridge: ``Linear(d_enc, h) -> GELU -> Linear(h, k * d_llm)``, one embedding to ``k`` tokens."""

    def __init__(self, encoder_dim: int, llm_dim: int, tokens: int = 1, hidden: int | None = None):
        super().__init__()
        hidden = hidden or llm_dim
        self.tokens = tokens
        self.net = nn.Sequential(nn.Linear(encoder_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * llm_dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(n, d_enc) -> (n, k, d_llm)``."""
        return rearrange(self.net(embeddings), "n (k d) -> n k d", k=self.tokens)


# ----------------------------------------------------------------------------------------- prompts with slots
def render_chat(tokenizer: Any, user: str, system: str | None = None) -> str:
    """The LLM's chat prompt for one user turn, ready for the assistant's answer (a plain layout without a template)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = f"{system}\n\n" if system else ""
    return f"{head}User: {user}\nAssistant:"


def tokenize_with_slots(tokenizer: Any, text: str, slot_counts: Sequence[int], slot_token: str | None = None) -> list[int]:
    """Token ids of ``text`` where every :data:`MARKER` becomes ``slot_counts[i]`` :data:`SLOT` positions.

    With ``slot_token`` (a token of the tokenizer's vocabulary, xRAG's ``<xRAG>``) the text is tokenized in one piece
    with ``slot_counts[i]`` space-separated copies of that token per marker, as xRAG's own code does, and the token's
    positions become the slots; without it the pieces between markers are tokenized separately.
    """
    pieces = text.split(MARKER)
    if len(pieces) - 1 != len(slot_counts):
        raise InvalidPromptError(f"the prompt has {len(pieces) - 1} xRAG markers for {len(slot_counts)} documents")
    if slot_token is not None:
        slot_id = tokenizer.convert_tokens_to_ids(slot_token)
        if slot_id is None or slot_id == tokenizer.unk_token_id:
            raise ConfigError(f"slot_token {slot_token!r} is not a token of this tokenizer's vocabulary")
        # a space before the token, as xRAG always writes it: sentencepiece-style tokenizers match an added
        # (normalized) token only after one
        fills = [(" " if p and not p.endswith(" ") else "") + " ".join([slot_token] * int(n))
                 for p, n in zip(pieces, slot_counts)] + [""]
        ids = tokenizer("".join(p + f for p, f in zip(pieces, fills)), add_special_tokens=False)["input_ids"]
        if ids.count(slot_id) != sum(int(n) for n in slot_counts):
            raise InvalidPromptError(f"the prompt tokenizes to {ids.count(slot_id)} {slot_token} tokens for "
                                     f"{sum(int(n) for n in slot_counts)} soft tokens")
        return [SLOT if i == slot_id else i for i in ids]
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        if i < len(slot_counts):
            ids += [SLOT] * int(slot_counts[i])
    return ids


def with_token(tokenizer: Any, token: str) -> Any:
    """``tokenizer`` if ``token`` is in its vocabulary, else a copy with it added the way xRAG adds ``<xRAG>``
    (an ``AddedToken`` without stripping; a copy, so a tokenizer shared with other compressors is left alone)."""
    import copy

    from transformers import AddedToken

    if token in tokenizer.get_vocab():
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([AddedToken(token, lstrip=False, rstrip=False)])
    return tokenizer


def markers(n: int) -> str:
    """Placeholders for ``n`` documents, as xRAG writes several ``<xRAG>`` tokens: separated by spaces."""
    return " ".join([MARKER] * n)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
             labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad id lists into ``input_ids``, ``attention_mask`` and ``slot_mask`` (and ``labels`` with -100)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    slots = torch.zeros((len(rows), width), dtype=torch.bool)
    lab = torch.full((len(rows), width), -100, dtype=torch.long) if labels is not None else None
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        t = torch.tensor(row, dtype=torch.long)
        slots[i, span] = t == SLOT
        ids[i, span] = t.clamp(min=0) if len(row) else t
        ids[i, span][t == SLOT] = pad_id
        attn[i, span] = 1
        if lab is not None:
            lab[i, span] = torch.tensor(labels[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": attn, "slot_mask": slots}
    if lab is not None:
        out["labels"] = lab
    return out


def rag_user_message(question: str | None, background: str | None = None,
                     instruction: str | None = QA_INSTRUCTION) -> str:
    """The reader's user turn (xRAG's fine-tuning layout): background, question, then the answer instruction."""
    parts = [f"Refer to the background document: {background}"] if background else []
    parts += [question.strip()] if question and question.strip() else []
    parts += [instruction] if instruction else []
    return "\n\n".join(parts)


def paraphrase_prompt(index: int | None = None, rng: random.Random | None = None) -> str:
    """One of xRAG's paraphrase instructions, with a marker for the document's tokens."""
    i = index if index is not None else (rng or random).randrange(len(PARAPHRASE_INSTRUCTIONS))
    return PARAPHRASE_INSTRUCTIONS[i % len(PARAPHRASE_INSTRUCTIONS)].format(xrag=MARKER)


# ----------------------------------------------------------------------------------------------- the compressor
@dataclass
class XRAGObjective:
    """Training loss of xRAG: ``nll * NLL(answer | soft tokens) + kl * T^2 KL(teacher || student)`` on label positions.

    The teacher is the same frozen LLM reading the full text (xRAG's self-distillation; ``kl=2.0`` in its
    fine-tuning stage, 0 for paraphrase pretraining). ``distill_topk`` restricts the KL to the teacher's top tokens.
    """

    nll: float = 1.0
    kl: float = 0.0
    temperature: float = 1.0
    distill_topk: int | None = None


class XRAGModel(nn.Module):
    """Frozen sentence encoder + trainable projector + frozen LLM; the trainable state is ``projector`` alone."""

    def __init__(self, llm: Any, tokenizer: Any, encoder: SentenceEncoder, tokens_per_chunk: int = 1,
                 projector_hidden: int | None = None, max_chunks: int | None = None):
        super().__init__()
        self.llm, self.tokenizer, self.encoder = llm, tokenizer, encoder
        self.llm.requires_grad_(False)
        self.encoder.requires_grad_(False)
        llm_dim = self.llm.get_input_embeddings().embedding_dim
        self.projector = Projector(encoder.dim, llm_dim, tokens_per_chunk, projector_hidden)
        self.projector.to(device=self.device)
        self.max_chunks = max_chunks
        self.slot_token: str | None = None
        self.objective = XRAGObjective()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @property
    def tokens_per_chunk(self) -> int:
        return self.projector.tokens

    def train(self, mode: bool = True) -> XRAGModel:
        super().train(mode)
        self.llm.eval()  # frozen parts never switch dropout on
        self.encoder.eval()
        return self

    # ---------------------------------------------------------------------------------------- soft tokens
    def encoder_batch(self, documents: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Encoder inputs of every chunk of every document, and the soft-token count of each document."""
        batch, chunks = self.encoder.tokenize_chunks(documents, self.max_chunks)
        return batch, [c * self.tokens_per_chunk for c in chunks]

    def project(self, encoder_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(n_chunks * k, d_llm)`` soft tokens of an encoder batch, in document order."""
        inputs = {k: v.to(self.device) for k, v in encoder_inputs.items()}
        embeddings = self.encoder(**inputs)
        soft = self.projector(embeddings.to(self.projector.net[0].weight.dtype))
        return rearrange(soft, "n k d -> (n k) d")

    def splice(self, input_ids: torch.Tensor, slot_mask: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``input_ids`` with the slot positions filled, row by row, by the rows of ``soft``."""
        embeds = self.llm.get_input_embeddings()(input_ids.to(self.device))
        slot_mask = slot_mask.to(self.device)
        if int(slot_mask.sum()) != soft.shape[0]:
            raise InvalidPromptError(f"{int(slot_mask.sum())} placeholder positions for {soft.shape[0]} soft tokens")
        return embeds.masked_scatter(slot_mask.unsqueeze(-1), soft.to(embeds.dtype))

    # ------------------------------------------------------------------------------------------------ loss
    def label_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        """Logits at the positions that predict a label, and those labels: the LM head never sees the prompt."""
        mask = attention_mask.to(self.device)
        hidden = self.llm.base_model(inputs_embeds=inputs_embeds, attention_mask=mask).last_hidden_state
        labels = labels.to(self.device)
        predicts = labels[:, 1:] != -100
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][predicts]).float()
        return logits, labels[:, 1:][predicts]

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        soft = self.project({k[len("enc_"):]: v for k, v in batch.items() if k.startswith("enc_")})
        embeds = self.splice(batch["input_ids"], batch["slot_mask"], soft)
        logits, targets = self.label_logits(embeds, batch["attention_mask"], batch["labels"])
        nll = F.cross_entropy(logits, targets)
        obj = self.objective
        out = {"nll": nll.detach(), "token_acc": (logits.argmax(-1) == targets).float().mean()}
        loss = obj.nll * nll
        if obj.kl and "teacher_input_ids" in batch:
            with torch.no_grad():
                teacher_embeds = self.llm.get_input_embeddings()(batch["teacher_input_ids"].to(self.device))
                teacher, _ = self.label_logits(teacher_embeds, batch["teacher_attention_mask"], batch["teacher_labels"])
            if teacher.shape != logits.shape:
                raise RuntimeError("teacher and student label counts differ; the collate function must align answers")
            kl = distill_kl(logits, teacher, obj.temperature, obj.distill_topk)
            loss = loss + obj.kl * kl
            out["kl"] = kl.detach()
        out["loss"] = loss
        return out

    @torch.no_grad()
    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        out = self.training_step(batch)
        return {k: float(v) for k, v in out.items()}

    # ------------------------------------------------------------------------------------------ generation
    def prompt_ids(self, user: str, slot_counts: Sequence[int], system: str | None = None) -> list[int]:
        return tokenize_with_slots(self.tokenizer, render_chat(self.tokenizer, user, system), slot_counts,
                                   self.slot_token)


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
               topk: int | None = None) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` averaged over positions (xRAG's ``get_kl_loss``)."""
    if topk:
        idx = teacher.topk(topk, dim=-1).indices
        student, teacher = student.gather(-1, idx), teacher.gather(-1, idx)
    return F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature**2


@dataclass
class XRAGConfig(SoftConfig):
    """xRAG's knobs. ``num_slots`` is the number of LLM tokens per encoder chunk (1 in the paper); ``chunk_tokens``
    is the chunk size in *encoder* tokens (capped by the encoder's window, 256 for MiniLM); ``max_chunks`` caps the
    chunks per document (None: all). ``answer_instruction`` ends every QA prompt; ``system`` replaces the chat
    template's default system message. ``slot_token``: a token that marks the soft tokens' places when the prompt is
    tokenized in one piece, as xRAG's code does (its ``<xRAG>``, the default: added to the tokenizer when missing,
    src/language_modeling/train.py:470-483 of Hannibal046/xRAG@121fa418; its embedding is never read, the projected
    vector takes its place, so the LLM's embedding table is not resized). ``slot_token: null`` is mmcompress's own
    variant, an option: the text around the soft tokens is tokenized piece by piece, so no token is added to a
    frozen vocabulary (the shipped configs/soft/xrag.yaml and configs/train/xrag-*.yaml set it).
    ``encoder_dtype``: dtype of the frozen encoder (float32, bfloat16...)."""

    num_slots: int = 1
    chunk_tokens: int = 256
    max_new_tokens: int = 32
    encoder: str = "minilm-l6"
    pooling: str = "auto"
    normalize: bool | None = None
    projector_hidden: int | None = None
    max_chunks: int | None = None
    answer_instruction: str | None = QA_INSTRUCTION
    system: str | None = None
    slot_token: str | None = XRAG_TOKEN
    encoder_dtype: str = "float32"
    MMCOMPRESS_VARIANT: ClassVar[dict[str, Any]] = {"slot_token": None}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_chunks is not None and int(self.max_chunks) < 1:
            raise ConfigError(f"max_chunks must be >= 1 or None, got {self.max_chunks}")
        if not isinstance(getattr(torch, str(self.encoder_dtype), None), torch.dtype):
            raise ConfigError(f"encoder_dtype must be a torch dtype name (float32, bfloat16...), got {self.encoder_dtype!r}")


@register_compressor("xrag")
class XRAG(SoftCompressor):
    """xRAG: each document becomes ``num_slots`` projected tokens (one per chunk); kept text stays text.

        xrag = XRAG()                                   # MiniLM encoder, SmolLM2-135M reader
        soft = xrag.compress(["doc one ...", "doc two ..."], question="Who ...?")
        xrag.generate(soft)                             # the answer, read from 2 soft tokens + the question

    The decoder prompt is the LLM's chat template around xRAG's layout: ``Refer to the background document:
    <soft tokens>`` then the kept text (instruction, question) and ``answer_instruction``.
    """

    config_class = XRAGConfig

    def build_module(self) -> XRAGModel:
        cfg = self.config
        encoder = SentenceEncoder(cfg.encoder, cfg.pooling, cfg.normalize, cfg.chunk_tokens,
                                  getattr(torch, cfg.encoder_dtype))
        encoder.to(self.device)
        if cfg.slot_token is not None:
            self._tokenizer = with_token(self.tokenizer, cfg.slot_token)
        module = XRAGModel(self.llm, self.tokenizer, encoder, cfg.num_slots, cfg.projector_hidden, cfg.max_chunks)
        module.slot_token = cfg.slot_token
        return module

    def encode_spans(self, texts: Sequence[str]) -> list[SoftSegment]:
        module = self.module
        batch, counts = module.encoder_batch(texts)
        flat = module.project(batch)
        origin = self.count_tokens(texts)
        return [SoftSegment(embeddings=e, origin_tokens=o, chunks=c // module.tokens_per_chunk, text=t)
                for e, o, c, t in zip(torch.split(flat, counts), origin, counts, texts)]

    def sentence_embeddings(self, documents: Sequence[str]) -> torch.Tensor:
        """``[n, d_enc]``: the frozen encoder's embedding of each document's first chunk, e.g. to build a retrieval
        index once and answer from it later with :meth:`compress_embeddings`."""
        batch, _ = self.module.encoder.tokenize_chunks(documents, max_chunks=1)
        with torch.no_grad():
            return self.module.encoder(**{k: v.to(self.device) for k, v in batch.items()})

    def compress_embeddings(self, embeddings: Any, question: str | Sequence[str] | None = None) -> SoftPrompt:
        """A :class:`SoftPrompt` from precomputed sentence embeddings, without the documents' text: ``embeddings``
        is one ``[n_docs, d_enc]`` tensor per prompt (or one tensor for a single prompt). xRAG's point: the retriever
        already holds these vectors, so answering costs the projector and the reader only. Origin token counts are
        unknown here and reported as 0."""
        from ..prompt import TextSegment

        per_prompt = [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)
        questions = [question] * len(per_prompt) if question is None or isinstance(question, str) else list(question)
        if len(questions) != len(per_prompt):
            raise InvalidPromptError(f"got {len(questions)} questions for {len(per_prompt)} prompts")
        module, items, counts = self.module, [], []
        for emb, q in zip(per_prompt, questions):
            emb = torch.as_tensor(emb).reshape(-1, module.encoder.dim).to(self.device)
            with torch.no_grad():
                soft = module.projector(emb.to(module.projector.net[0].weight.dtype))
            pieces: list[Any] = [SoftSegment(embeddings=s, origin_tokens=0, chunks=1) for s in soft]
            if q:
                pieces.append(TextSegment(q, role=Role.QUESTION))
            items.append(pieces)
            counts.append(int(soft.shape[0] * soft.shape[1]) + (self.count_tokens([q])[0] if q else 0))
        return SoftPrompt(items, self.name, [0] * len(items), counts)

    def load_trainable(self, weights: dict[str, Any], source: str = "weights", fresh: Sequence[str] = ()) -> None:
        """Load a saved projector; a projector of another shape (other encoder, LLM, hidden size or ``num_slots``)
        is a :class:`ConfigError`, not a size-mismatch traceback."""
        params = dict(self.module.named_parameters())
        wrong = [f"{n} {tuple(w.shape)} vs {tuple(params[n].shape)}" for n, w in weights.items()
                 if n in params and tuple(w.shape) != tuple(params[n].shape)]
        if wrong:
            raise ConfigError(f"{source} does not match xrag with this config (saved vs built shapes: {wrong[:2]}); "
                              "load it with the encoder, model, projector_hidden and num_slots it was trained with")
        super().load_trainable(weights, source, fresh)

    def user_message(self, pieces: Sequence[Any], task: str, question: str | None) -> tuple[str, list[int]]:
        """The user turn of one prompt with a :data:`MARKER` per soft piece, and each marker's token count."""
        counts: list[int] = []
        parts: list[str] = []
        run: list[str] = []

        def close_run() -> None:
            if run:
                joiner = " " if all(r == MARKER for r in run) else "\n\n"
                parts.append(("Refer to the background document: " if task != "ae" else "") + joiner.join(run))
                run.clear()

        for piece in pieces:
            if isinstance(piece, SoftSegment):
                if piece.embeddings is None:
                    raise ConfigError("xrag reads embedding soft segments; this one holds keys/values")
                run.append(MARKER)
                counts.append(piece.num_tokens)
            elif piece.role is Role.CONTEXT:  # a document kept as text is shown the way soft ones are
                run.append(piece.text)
            else:
                close_run()
                parts.append(piece.text)
        close_run()
        if task == "ae":  # regenerate the documents: xRAG's first paraphrase instruction
            return paraphrase_prompt(0).replace(MARKER, " ".join(parts)), counts
        if question and question.strip():
            parts.append(question.strip())
        if task == "qa" and self.config.answer_instruction:
            parts.append(self.config.answer_instruction)
        return "\n\n".join(p for p in parts if p), counts

    def decoder_embeddings(self, pieces: Sequence[Any], task: str, question: str | None):
        """``[T, D]``: the chat prompt with each soft piece's tokens spliced in at its placeholder."""
        user, counts = self.user_message(pieces, task, question)
        module = self.module
        ids = module.prompt_ids(user, counts, self.config.system)
        batch = pad_rows([ids], self.tokenizer.pad_token_id)
        soft = [p.embeddings for p in pieces if isinstance(p, SoftSegment)]
        width = module.llm.get_input_embeddings().embedding_dim
        flat = torch.cat(soft).to(self.device) if soft else torch.zeros(0, width)
        return module.splice(batch["input_ids"], batch["slot_mask"], flat)[0]

    def generate(self, soft_prompts: Any, question: Any = None, *, task: str = "qa", max_new_tokens: int | None = None,
                 **generate_kwargs: Any) -> list[str]:
        """Answers (greedy unless told otherwise), all prompts in one ``generate()`` call; see the base class."""
        generate_kwargs = {"temperature": None, "top_p": None, "top_k": None, **generate_kwargs}
        out = super().generate(soft_prompts, question, task=task, max_new_tokens=max_new_tokens, **generate_kwargs)
        return [t.strip() for t in out]
