"""Data for training runs: built-in corpora, tokenizers, packed blocks and a batch loader;
data selection (angle concentration, GAIN sampler, top fraction) and mixing (replay, domain
upsampling).

Everything is local: the ``stdlib`` and ``docs`` corpora come from the running Python
installation, BPE tokenizers are trained on this machine, user data is read offline
with ``datasets``. On-disk cache: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``.

Example::

    >>> from workbench.data import load_blocks, BlockLoader
    >>> blocks = load_blocks("stdlib", block_size=32, max_tokens=5_000)
    >>> x, y = next(BlockLoader(blocks, batch_size=8, seed=0))
    >>> tuple(x.shape), tuple(y.shape)
    ((8, 32), (8, 32))
"""
from .alignment import RademacherProjector, alignment_scores, gradient_features, per_example_grads
from .angles import angle_concentration, find_mlp_input_module
from .blocks import load_blocks, load_documents, token_stream
from .corpora import corpus_stats, list_corpora, load_corpus
from .loader import BlockLoader, eval_batches
from .shards import TokenBlocks, prepare_shards
from .sampler import DomainMix, GainSampler, ReplayLoader, select_top, upsample_end
from .tasks import (answer_correct, arithmetic_examples, encode_examples, encode_prompts,
                    exact_match, first_step_reaching, generate_answers, per_example_grad_norms,
                    per_example_losses, prompt_angles, train_on_task)
from .tokenizer import BPETokenizer, ByteTokenizer, get_tokenizer

__all__ = [
    "list_corpora", "load_corpus", "corpus_stats",
    "ByteTokenizer", "BPETokenizer", "get_tokenizer",
    "load_blocks", "load_documents", "token_stream",
    "BlockLoader", "eval_batches", "prepare_shards", "TokenBlocks",
    "angle_concentration", "find_mlp_input_module",
    "per_example_grads", "RademacherProjector", "gradient_features", "alignment_scores",
    "GainSampler", "select_top", "ReplayLoader", "DomainMix", "upsample_end",
    "arithmetic_examples", "encode_examples", "encode_prompts", "generate_answers",
    "answer_correct", "exact_match", "train_on_task", "first_step_reaching", "prompt_angles",
    "per_example_grad_norms", "per_example_losses",
]
