"""The demo tokenizer: character level, built locally with the ``tokenizers`` library, saved as a Hugging Face
tokenizer directory with a chat template, so every code path treats it like a Qwen2 tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
BOS_TOKEN = "<|bos|>"
# Ends an assistant turn (and every other turn), like Qwen2's <|im_end|>; generation stops on it.
EOS_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)

# Printable ASCII covers the demo task, the instruction and the iGRPO refinement prompt; newline and tab for the
# templates. Anything else (non-ASCII) maps to UNK.
CHARACTERS = tuple(string.printable[:-2])  # drops \x0b and \x0c, keeps space, \t, \n, \r

# No BOS, like Qwen2: the template opens with a role token. The generation prompt ends with "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def _pad_to_multiple(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


def build_demo_tokenizer(out_dir: str | Path | None = None):
    """Build the character-level demo tokenizer; save it to ``out_dir`` when given. Returns a
    ``PreTrainedTokenizerFast``.

    The vocabulary (specials, then characters, then reserved fillers) is padded to a multiple of 8 so tensor parallel
    sizes 2, 4 and 8 divide it. Role and end tokens are single special tokens; ``decode(..., skip_special_tokens=True)``
    drops them.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in (*SPECIAL_TOKENS, *CHARACTERS):
        vocab[tok] = len(vocab)
    size = _pad_to_multiple(len(vocab))
    for i in range(size - len(vocab)):
        vocab[f"<|reserved_{i}|>"] = len(vocab)
    assert len(vocab) <= 256

    # BPE with no merges and no pre-tokenizer is exactly character level, and keeps whitespace as characters.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    tok.decoder = decoders.Fuse()  # join characters with nothing in between (the default would insert spaces)
    tok.add_special_tokens([t for t in vocab if t.startswith("<|")])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",  # generation pads on the left
        model_max_length=4096,
    )
    hf.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf
