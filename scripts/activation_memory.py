"""The activation-memory table of docs/gradient_caching.md, computed on paper (no model is run).

Per transformer layer, mixed precision (bf16 / fp16 activations, 1-byte dropout masks), the
count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4.1) for what backward keeps::

    bytes per layer = s * r * h * (34 + 5 * a * s / h)

with s the padded sequence length, r the rows of the forward, h the hidden size and a the
attention heads. Unsupervised SimCSE-style training embeds each sentence twice (r = 2 B for a
batch of B); the supervised triplets would be 3 B. Gradient caching keeps one mini-batch of M
examples (r = 2 M) plus the batch's embeddings and their gradient (2 B x h float32 each).

The weights side (not activations) for comparison: fp32 weights, gradients and AdamW's two
moments, 16 bytes per parameter, with the parameter count from the architecture (embeddings,
L layers of 12 h^2 + 13 h, BERT's pooler).

    python scripts/activation_memory.py            # the markdown tables
"""

from __future__ import annotations

import argparse

# name: (layers, hidden, heads, vocabulary, positions, token types)
MODELS = {
    "bert-base": (12, 768, 12, 30522, 512, 2),
    "bert-large": (24, 1024, 16, 30522, 512, 2),
    "roberta-large": (24, 1024, 16, 50265, 514, 1),
}
GIB = 1024 ** 3


def layer_bytes(rows: int, seq: int, hidden: int, heads: int) -> float:
    """Korthikanti et al.'s activation bytes of one layer (16-bit activations)."""
    return seq * rows * hidden * (34 + 5 * heads * seq / hidden)


def activation_bytes(model: str, rows: int, seq: int) -> float:
    layers, hidden, heads, *_ = MODELS[model]
    return layers * layer_bytes(rows, seq, hidden, heads)


def parameters(model: str) -> int:
    layers, h, _heads, vocab, pos, types = MODELS[model]
    embeddings = (vocab + pos + types) * h + 2 * h
    per_layer = 12 * h * h + 13 * h
    pooler = h * h + h
    return embeddings + layers * per_layer + pooler


def table(model: str, batches: list[int], mini: int, seq: int, views: int) -> str:
    hidden = MODELS[model][1]
    title = (f"**{model}** ({parameters(model) / 1e6:.0f} M parameters; weights, gradients and "
             f"AdamW moments: {16 * parameters(model) / GIB:.1f} GiB)")
    lines = [title, "",
             f"| batch | activations, one forward | with --mini-batch-size {mini} |",
             "|---:|---:|---:|"]
    for b in batches:
        full = activation_bytes(model, views * b, seq)
        cached = activation_bytes(model, views * min(mini, b), seq) + 2 * views * b * hidden * 4
        lines.append(f"| {b} | {full / GIB:.2f} GiB | {cached / GIB:.2f} GiB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=32, help="padded length (SimCSE: 32)")
    ap.add_argument("--mini", type=int, default=32, help="mini-batch size M")
    ap.add_argument("--views", type=int, default=2, help="rows per example (2: unsupervised)")
    args = ap.parse_args()
    batches = [64, 128, 256, 512, 1024]
    print("\n\n".join(table(m, batches, args.mini, args.seq, args.views) for m in MODELS))


if __name__ == "__main__":
    main()
