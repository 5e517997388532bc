"""Write a tiny random-weight llama-architecture GGUF model, deterministically.

    python tests/integration/make_model.py OUT.gguf

Nothing can be downloaded here, so the integration suite makes its own model: 2 layers,
width 64, 4 heads, a SentencePiece-style ("llama") vocabulary of about 800 tokens (byte
fallback, ``<unk>``/``<s>``/``</s>``, ChatML control tokens, ASCII characters and English
words with all their ``▁`` prefixes) and a ChatML chat template. Its text is nonsense, but
tokenization, templating, sampling, usage counting, streaming and grammar-constrained JSON
in llama.cpp are all real. The same seed gives the same bytes.

Random weights would let the model end a turn whenever ``<|im_end|>`` happens to win, which
makes tests flaky. So one channel of the residual stream is held constant (every embedding
has 1.0 there and no layer writes to it), and the output matrix reads that channel as a
per-token bias: control and byte tokens are pushed far down (free text never ends early and
never contains broken UTF-8; a grammar can still force them), whole words are nudged up,
and ``}`` is nudged up so that JSON-constrained sampling closes objects quickly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SEED = 20261123
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 2048

# The residual channel that is always 1.0, and how strongly the final norm reads it.
BIAS_CHANNEL = 0
BIAS_GAIN = 10.0
# Per-token output biases, in units of that channel (the logit moves by about 5-10x these;
# the random part of a logit has a standard deviation of about 1.6).
SUPPRESS = -10.0  # control, unknown and byte tokens: never sampled unless a grammar forces
WORD = 0.2  # whole words ("▁hello"): readable nonsense
FRAGMENT = -0.2  # word prefixes ("▁hel"), still there for the tokenizer
CLOSE = 0.4  # "}" beats '"' and " " right after "{": a JSON object closes at once
OPEN = -0.4  # '"' and " " (the only other tokens a JSON grammar allows after "{")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could "
    "people my than first water been call who its now find long down day did get come made "
    "may part hello world json true false null yes ok label bug billing answer model server "
    "token stream test say something"
)
WORDS = WORD_TEXT.split()

# SentencePiece token types, as llama.cpp reads them.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
SPECIALS = [
    ("<unk>", UNKNOWN),
    ("<s>", CONTROL),
    ("</s>", CONTROL),
    ("<|im_start|>", CONTROL),
    ("<|im_end|>", CONTROL),
]
UNK_ID, BOS_ID, EOS_ID = 0, 1, 4  # EOS is <|im_end|>, as in ChatML models


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types. Higher scores merge first, so longer pieces win."""
    tokens = [text for text, _ in SPECIALS]
    types = [kind for _, kind in SPECIALS]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    pieces = ["▁"]
    pieces += [chr(c) for c in range(33, 127)]  # every printable ASCII character
    for word in WORDS:  # "▁h", "▁he", "▁hel", ... so each word merges into one token
        pieces += ["▁" + word[:n] for n in range(1, len(word) + 1)]
    normal = list(dict.fromkeys(pieces))
    scores = [0.0] * len(tokens) + [float(len(p)) for p in normal]
    return tokens + normal, scores, types + [NORMAL] * len(normal)


def output_bias(tokens: list[str], types: list[int]) -> np.ndarray:
    """The per-token bias the output matrix reads from the constant channel."""
    words = {"▁" + w for w in WORDS}
    bias = np.zeros(len(tokens), dtype=np.float32)
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != NORMAL:
            bias[i] = SUPPRESS
        elif text in words:
            bias[i] = WORD
        elif text.startswith("▁") and len(text) > 1:
            bias[i] = FRAGMENT
        elif text == "}":
            bias[i] = CLOSE
        elif text in ('"', "▁"):
            bias[i] = OPEN
    return bias


def write(path: Path) -> None:
    """Write the model to ``path``."""
    import gguf

    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def weight(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        # numpy shape (out, in): GGUF stores ggml's [in, out] as a row-major (out, in)
        # array. Scaled by 1/sqrt(in), so activations stay near unit size.
        scale = gain / cols**0.5
        values: np.ndarray = rng.standard_normal((rows, cols)) * scale
        return values.astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    token_embd = weight(n_vocab, N_EMBD, gain=N_EMBD**0.5)  # unit entries
    token_embd[:, BIAS_CHANNEL] = 1.0
    output = weight(n_vocab, N_EMBD, gain=0.2 * N_EMBD**0.5)
    output[:, BIAS_CHANNEL] = output_bias(tokens, types)
    output_norm = ones(N_EMBD)
    output_norm[BIAS_CHANNEL] = BIAS_GAIN

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("lmlink-tiny-random")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", token_embd)
    for i in range(N_LAYER):
        attn_output = weight(N_EMBD, N_EMBD, gain=0.5)
        ffn_down = weight(N_EMBD, N_FF, gain=0.5)
        attn_output[BIAS_CHANNEL] = 0.0  # no layer writes to the constant channel
        ffn_down[BIAS_CHANNEL] = 0.0
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_output.weight", attn_output)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", ffn_down)
    writer.add_tensor("output_norm.weight", output_norm)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python make_model.py OUT.gguf", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(out)  # atomic: a half-written model never has the final name
    finally:
        tmp.unlink(missing_ok=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
