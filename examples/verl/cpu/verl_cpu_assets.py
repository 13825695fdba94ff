"""The CPU harness's model, tokenizer and prompts, built locally (no download), cached by content.

A harness for trying and testing, not a training setup: the model is a randomly initialised
2-layer Qwen2 (hidden size 64) that produces byte salad, the tokenizer a byte-level BPE of about
310 ids trained on the task's sentences, the task 16 toy sums. Enough for veRL to run every stage
of a PPO step.

    python verl_cpu_assets.py HOME      # prints the asset directory, HOME/<hash>, building it if needed

The directory holds `model/` (weights, config, generation config, tokenizer with a chat template)
and `train.parquet` / `val.parquet` in veRL's RL dataset format: `prompt` (chat messages),
`data_source`, `ability`, `reward_model` {style, ground_truth}, `extra_info` {split, index}.
The hash covers this file, so editing it rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, turn start, turn end (= EOS)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DATA_SOURCE = "sae_cpu/last_digit"
N_PROMPTS = 16


def tokenizer():
    """A byte-level BPE PreTrainedTokenizerFast (about 310 ids: 256 bytes, the SPECIAL tokens,
    merges learned from the task's own sentences), EOS <|im_end|>, pad <|endoftext|>, and a
    ChatML template. Any text encodes; any id sequence decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [f"{role} what is the last digit of {a} plus {b}? the answer is {(a + b) % 10}."
              for role in ("system", "user", "assistant") for a in range(10) for b in range(10)]
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE, model_max_length=512)


def model(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0):
    """A random Qwen2ForCausalLM: 2 layers, hidden 64, 4 heads (2 KV heads), fp32 weights. Initialised
    with a large spread (std 0.5) so that its next-token distributions are peaked: the sampled tokens'
    probabilities then fall on both sides of SAE's boundary threshold (about half below 0.2), where
    a standard initialisation gives a near-uniform model, all tokens below it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=0.5, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         bos_token_id=None)
    net = Qwen2ForCausalLM(config)
    net.generation_config.eos_token_id = eos_token_id
    net.generation_config.pad_token_id = pad_token_id
    net.generation_config.bos_token_id = None
    return net


def prompts(split: str) -> list[dict]:
    """N_PROMPTS rows of veRL's RL dataset format; the answer is the last digit of a + b."""
    rows = []
    for i in range(N_PROMPTS):
        a, b = (3 * i + 1) % 10, (7 * i + 2) % 10
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"what is the last digit of {a} plus {b}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str((a + b) % 10)},
            "extra_info": {"split": split, "index": i},
        })
    return rows


def write(directory: Path) -> None:
    """Write model/, train.parquet and val.parquet into `directory`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = tokenizer()
    net = model(len(tok), tok.eos_token_id, tok.pad_token_id)
    net.save_pretrained(directory / "model")
    tok.save_pretrained(directory / "model")
    for split in ("train", "val"):
        pq.write_table(pa.Table.from_pylist(prompts(split)), directory / f"{split}.parquet")


def build(home: str | os.PathLike) -> Path:
    """The asset directory `home/<content hash>`, built if absent (atomically: concurrent callers
    share one build). Returns its path."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    home = Path(home).expanduser()
    target = home / digest
    if (target / "val.parquet").exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
    try:
        write(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first
            if not (target / "val.parquet").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python verl_cpu_assets.py HOME")
    print(build(sys.argv[1]))
